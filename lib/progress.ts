/**
 * How training reports progress: a one-line progress bar for terminals (redrawn in place) and
 * plain log lines for pipes and CI. Pure formatting: the caller decides where text goes.
 */

/** What a progress report shows. */
export interface ProgressInfo {
  step: number;
  steps: number;
  /** Mean training loss (nats per byte) over the last interval. */
  loss: number;
  lr: number;
  bytesPerSecond: number;
  /** Seconds left at the current speed. */
  etaSeconds: number;
  /** Validation bits per byte, when an evaluation just ran. */
  valBpb?: number;
}

/** `[#######.........] 120/2000 loss 2.345 bpb 3.383 lr 2.90e-3 1,234 B/s ETA 3m12s` */
export function progressBar(info: ProgressInfo, width = 20): string {
  const done = Math.round((width * info.step) / Math.max(1, info.steps));
  const bar = "#".repeat(done) + ".".repeat(width - done);
  return `[${bar}] ${describe(info)} ETA ${formatDuration(info.etaSeconds)}`;
}

/** `step 120/2000 loss 2.345 bpb 3.383 lr 2.90e-3 1,234 B/s eta 3m12s val_bpb 3.100` */
export function logLine(info: ProgressInfo): string {
  const val = info.valBpb === undefined ? "" : ` val_bpb ${info.valBpb.toFixed(3)}`;
  return `step ${describe(info)} eta ${formatDuration(info.etaSeconds)}${val}`;
}

function describe(info: ProgressInfo): string {
  const bpb = info.loss / Math.LN2;
  const speed = Math.round(info.bytesPerSecond).toLocaleString("en-US");
  return `${info.step}/${info.steps} loss ${info.loss.toFixed(3)} bpb ${bpb.toFixed(3)} ` +
    `lr ${info.lr.toExponential(2)} ${speed} B/s`;
}

/** 3725 → "1h02m", 192 → "3m12s", 7.4 → "7s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}
