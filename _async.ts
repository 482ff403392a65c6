// Bounded waiting: the one way this module gives up on a promise that may
// never settle (a silent server, a stuck connection). No call hangs.

/**
 * Settles like `promise` if it settles within `ms`; otherwise like
 * `onTimeout()` (return a fallback, or throw). The timer is cleared either
 * way, so Deno's test sanitizers see no leak. `promise` itself is not
 * cancelled: a caller that must stop it does so in `onTimeout`.
 */
export async function withTimeout<T, U = T>(
  promise: Promise<T>,
  ms: number,
  onTimeout: () => U | Promise<U>,
): Promise<T | U> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<U>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(onTimeout());
      } catch (error) {
        reject(error);
      }
    }, ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
