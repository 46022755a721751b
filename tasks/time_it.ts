/**
 * Seconds per call of `fn` after one warm-up call (pipelines, allocations), over at least
 * `minRuns` calls and `minSeconds`.
 */
export async function timeIt(
  fn: () => Promise<unknown>,
  minSeconds: number,
  minRuns: number,
): Promise<number> {
  await fn();
  const start = performance.now();
  let runs = 0;
  while (runs < minRuns || performance.now() - start < minSeconds * 1000) {
    await fn();
    runs++;
  }
  return (performance.now() - start) / 1000 / runs;
}
