// Copies of bytes that the caller can neither change nor share: what every
// backend stores and returns (contract item 2). It never reads a store.

/**
 * A copy of `bytes` in its own `ArrayBuffer`, always a plain `Uint8Array`.
 * Not `bytes.slice()`: on a Node `Buffer` (a `Uint8Array` subclass) `slice`
 * returns a view of the same memory, so later writes would show through.
 */
export function copyBytes(bytes: Uint8Array): Uint8Array {
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return copy;
}
