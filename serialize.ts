/**
 * Slot serialization over MessagePack (placeholder, replaced in this issue).
 *
 * @module
 */

/**
 * Encodes a value as MessagePack.
 *
 * @param value The value.
 * @returns The bytes.
 */
export function serializeSlot(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/**
 * Decodes MessagePack bytes.
 *
 * @param data The bytes.
 * @returns The value.
 */
export function deserializeSlot<T = unknown>(data: Uint8Array): T {
  return JSON.parse(new TextDecoder().decode(data)) as T;
}
