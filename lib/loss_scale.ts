/**
 * Dynamic loss scaling, for training with f16 matmul inputs: backward runs on the loss times
 * `scale`, so that gradients stay inside f16's range (small ones above its subnormals, 6e-8), and
 * the optimizer divides it out again. A step whose gradients overflowed (their norm is not
 * finite) is skipped and the scale halved; after `growthInterval` steps in a row without
 * overflow, the scale doubles.
 */

/** The state a checkpoint keeps, so that a resumed run scales as the uninterrupted one. */
export interface LossScaleState {
  scale: number;
  /** Steps applied since the last overflow or growth. */
  goodSteps: number;
}

/** The loss scale an f16 run starts from (TrainSettings.loss_scale). */
export const DEFAULT_LOSS_SCALE = 2 ** 16;
/** Steps in a row without overflow after which the scale doubles. */
export const LOSS_SCALE_GROWTH_INTERVAL = 2000;
/** The scale never falls below 1 nor grows beyond 2^24. */
const MIN_SCALE = 1, MAX_SCALE = 2 ** 24;

export class LossScaler {
  #state: LossScaleState;

  constructor(initial = DEFAULT_LOSS_SCALE, readonly growthInterval = LOSS_SCALE_GROWTH_INTERVAL) {
    if (!(Number.isFinite(initial) && initial >= MIN_SCALE && initial <= MAX_SCALE)) {
      throw new Error(
        `the loss scale must be a number from ${MIN_SCALE} to ${MAX_SCALE} (2^24), not ${initial}`,
      );
    }
    this.#state = { scale: initial, goodSteps: 0 };
  }

  /** What the loss is multiplied by in this step's backward. */
  get scale(): number {
    return this.#state.scale;
  }

  get state(): LossScaleState {
    return { ...this.#state };
  }

  set state(state: LossScaleState) {
    const { scale, goodSteps } = state;
    if (!(scale >= MIN_SCALE && scale <= MAX_SCALE) || !(Number.isInteger(goodSteps) && goodSteps >= 0)) {
      throw new Error(
        `a loss-scale state needs a scale from 1 to 2^24 and whole good steps, not ${JSON.stringify(state)}`,
      );
    }
    this.#state = { scale, goodSteps };
  }

  /**
   * After backward, given the norm of the scaled gradients: true when the step may be applied
   * (the norm is finite); false when it overflowed, and then the scale is halved.
   */
  update(scaledNorm: number): boolean {
    const s = this.#state;
    if (!Number.isFinite(scaledNorm)) {
      s.scale = Math.max(MIN_SCALE, s.scale / 2);
      s.goodSteps = 0;
      return false;
    }
    if (++s.goodSteps >= this.growthInterval) {
      s.scale = Math.min(MAX_SCALE, s.scale * 2);
      s.goodSteps = 0;
    }
    return true;
  }
}
