// The heap, measured in-process after garbage collection, for tests of what code keeps alive.

import v8 from 'node:v8';
import vm from 'node:vm';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** A full collection now (WeakRefs cleared by it read undefined from the next job on). */
export function collectGarbage(): void {
  gc();
}

/**
 * The heap (with `withExternal`, plus the memory of Buffers) after collections, once it stopped
 * moving: a jest worker may still be freeing what an
 * earlier test file left (tens of MB) when this one starts.
 */
export async function heapAfterGc(withExternal = false): Promise<number> {
  let last = -1;
  for (let i = 0; i < 40; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 25));
    gc();
    const m = process.memoryUsage();
    // `external`: Buffers' bytes live outside the JS heap.
    const now = withExternal ? m.heapUsed + m.external : m.heapUsed;
    if (last >= 0 && Math.abs(now - last) < 64 * 1024) return now;
    last = now;
  }
  return last;
}
