/**
 * Slot serialization: values to standard MessagePack bytes and back, through
 * `npm:@msgpack/msgpack`.
 *
 * Slots are opaque bytes to every backend; these two functions are the
 * suggested way to fill them. The bytes are standard MessagePack: a Python
 * (`msgpack`) or Go reader decodes simple values, and decoding never runs
 * code. Every value either round-trips exactly or is refused with a
 * `TypeError`/`RangeError` naming what was wrong and where (`$.payload.cb`),
 * with one documented exception that follows JSON: an object property whose
 * value is `undefined` is left out (`{ a: undefined }` comes back `{}`; see
 * the deliberate choices below for why).
 *
 * ## Type mapping
 *
 * | JavaScript                          | MessagePack                                        | comes back as                |
 * | ----------------------------------- | -------------------------------------------------- | ---------------------------- |
 * | `null`                              | nil                                                | `null`                       |
 * | `boolean`                           | bool                                               | `boolean`                    |
 * | `number`, integer in int32/uint32   | smallest int format                                | `number`                     |
 * | any other `number` (2 ** 40, 1.5, `NaN`, `±Infinity`) | float 64                         | `number`                     |
 * | `-0`                                | float 64, and then so is every integer of that slot | `-0` (`number`)             |
 * | `bigint` in [-2 ** 63, 2 ** 64)     | int 64 / uint 64                                   | `bigint`                     |
 * | `string` (well-formed Unicode)      | str (UTF-8)                                        | `string`                     |
 * | `Uint8Array` (a Node `Buffer` too)  | bin                                                | plain `Uint8Array`           |
 * | `Date` (valid)                      | timestamp extension, type -1                       | `Date`                       |
 * | array (no holes)                    | array                                              | array                        |
 * | plain object (or null-prototype)    | map with string keys                               | plain object                 |
 * | `Map`                               | extension type 1: MessagePack array `[k0, v0, k1, v1, ...]` | `Map`               |
 *
 * Deliberate choices:
 * - An object property whose value is `undefined` is left out, as
 *   `JSON.stringify` does: `{ a: undefined, b: 1 }` comes back `{ b: 1 }`.
 *   Reading `a` back still gives `undefined`; only `"a" in value`,
 *   `Object.keys` and a strict deep equality see the difference. Why not
 *   refuse it: in TypeScript `{ a: undefined }` is the everyday spelling of
 *   an absent optional field (`{ text, replyTo: message.replyTo }`), so a
 *   refusal would turn ordinary payloads into errors on whichever path
 *   happens to leave a field unset; MessagePack has no `undefined`, and
 *   storing `nil` would come back `null`, a real change of value. Omit the
 *   property, or use `null`, when its presence matters. `undefined` anywhere
 *   else (top level, array item, `Map` key or value) has no such reading and
 *   is a `TypeError` naming its path.
 * - Refused with a `TypeError`: functions, symbols, sparse arrays (holes),
 *   symbol-keyed properties, an own `"__proto__"` key (use a `Map`), strings
 *   with lone surrogates, class instances and every other object type (`Set`,
 *   `RegExp`, `Error`, `ArrayBuffer`, typed arrays other than `Uint8Array`,
 *   ...): convert them to one of the types above first.
 * - Refused with a `RangeError`: a `bigint` outside the 64-bit range, an
 *   invalid `Date`, nesting deeper than 100 arrays/objects/Maps (which also
 *   catches circular references).
 * - Integers that another writer stored as int 64 / uint 64 come back as
 *   `bigint`, whatever their size. A MessagePack reader in another language
 *   sees `number`s above 32 bits as floats.
 * - Null-prototype objects come back as ordinary objects; non-enumerable
 *   properties are not stored (as in JSON).
 * - Each decoded `Uint8Array` owns its bytes: a plain `Uint8Array` over its
 *   own `ArrayBuffer` of exactly its length, whatever `data` was (a Node
 *   `Buffer` or a view too). It aliases neither `data` nor another decoded
 *   binary, can be transferred alone, and keeps nothing else alive.
 * - `deserializeSlot` accepts only standard MessagePack plus extension type
 *   1 (`Map`): any other extension type, map keys that are not strings or
 *   numbers, a `"__proto__"` key, trailing bytes, truncation and nesting
 *   deeper than 100 are `TypeError`s whose message starts with
 *   `deserializeSlot: malformed MessagePack` and whose `cause` is the
 *   underlying error.
 *
 * ## Why `@msgpack/msgpack` and not `msgpackr`
 * Measured with `deno bench -A bench/serialize_bench.ts` (Deno 2.9.6, 2 shared
 * cores, so noisy; ops/s, ratio against JSON.stringify + TextEncoder, or
 * TextDecoder + JSON.parse, in the same run):
 *
 * | realistic slot | JSON baseline | msgpackr        | @msgpack/msgpack | serializeSlot / deserializeSlot |
 * | -------------- | ------------- | --------------- | ---------------- | ------------------------------- |
 * | encode, 200 B  | 864,700       | 1,057,000 (1.22x) | 640,900 (0.74x) | 443,800 (0.51x)               |
 * | decode, 200 B  | 1,113,000     | 850,200 (0.76x) | 603,500 (0.54x)  | 346,500 (0.31x)                 |
 * | encode, 20 KB  | 43,220        | 32,660 (0.76x)  | 22,040 (0.51x)   | 12,390 (0.29x)                  |
 * | decode, 20 KB  | 23,800        | 24,220 (1.02x)  | 20,550 (0.86x)   | 19,330 (0.81x)                  |
 *
 * (Encoded sizes: 251 B and 13,242 B for both libraries; JSON 293 B and
 * 16,553 B.) The last column adds what keeps values exact: the walk that
 * refuses unrepresentable values, `ignoreUndefined`, the extension codec,
 * the nesting count and (figures measured before binaries were copied one by
 * one) a private copy of the whole slot. Since then no whole-slot copy is
 * made and each decoded binary is copied instead: these slots (no binaries)
 * decode as fast or faster; a slot holding binaries pays one allocation per
 * binary (measured on the same noisy machine: a 200 B slot with 3 binaries
 * 2.0 µs before, 5.0 µs after; a 20 KB slot with 20 binaries of 1 KB 5.8 µs
 * before, 14.8 µs after; one binary of 100 KB 15 µs before, 17 µs after).
 *
 * msgpackr is faster (1.5x to 1.65x encoding, 1.2x to 1.4x decoding, with its
 * native addon loaded) but does not meet the contract: its decoder accepts
 * its non-standard record extension even with `useRecords: false` and then
 * compiles readers with `new Function`; it also decodes its own Set, Error,
 * RegExp, typed-array and 0xC1 extensions; custom extensions (our `Map`) can
 * only be registered process-wide, changing every other msgpackr user; and
 * importing `npm:msgpackr` in Deno without `--allow-env` throws (it reads
 * `MSGPACKR_NATIVE_ACCELERATION_DISABLED`). `@msgpack/msgpack` decodes
 * standard MessagePack only, takes a per-instance extension codec, and
 * decodes iteratively.
 *
 * @module
 */

import {
  DecodeError,
  Decoder,
  decodeTimestampExtension,
  Encoder,
  encodeTimestampExtension,
  EXT_TIMESTAMP,
  ExtData,
  ExtensionCodec,
} from "@msgpack/msgpack";
import { copyBytes } from "./_bytes.ts";
import { describe } from "./_messages.ts";

/** The MessagePack extension type that carries a `Map`. */
const _MAP_EXT_TYPE = 1;
/** Deepest nesting of arrays, objects and Maps, on both sides. */
const _MAX_DEPTH = 100;
const _MIN_INT64 = -(2n ** 63n);
const _MAX_UINT64 = 2n ** 64n - 1n;

/** Which encoder a nested `Map` re-enters: the float one keeps `-0`. */
type _Context = { readonly floats: boolean };

/** An extension codec that refuses extension types it does not know. */
class _StrictCodec extends ExtensionCodec<_Context> {
  override decode(
    data: Uint8Array,
    extType: number,
    context: _Context,
  ): unknown {
    const value = super.decode(data, extType, context);
    // @msgpack/msgpack hands unknown extensions back as ExtData; we refuse them.
    if (value instanceof ExtData) {
      throw new DecodeError(`unknown extension type ${extType}`);
    }
    return value;
  }
}

const _codec = new _StrictCodec();
_codec.register({
  type: EXT_TIMESTAMP,
  encode: encodeTimestampExtension,
  decode: (data) => {
    const date = decodeTimestampExtension(data);
    if (Number.isNaN(date.getTime())) {
      throw new RangeError("timestamp outside the range of a JavaScript Date");
    }
    return date;
  },
});
_codec.register({
  type: _MAP_EXT_TYPE,
  encode: (value, context) => {
    if (!(value instanceof Map)) return null;
    const flat: unknown[] = [];
    for (const [key, item] of value) flat.push(key, item);
    return (context.floats ? _floatEncoder : _encoder).encode(flat);
  },
  decode: (data) => {
    const flat = _decoder.decode(data);
    if (!Array.isArray(flat) || flat.length % 2 !== 0) {
      throw new DecodeError(
        `extension type ${_MAP_EXT_TYPE} (Map) must hold an array of keys and values`,
      );
    }
    const map = new Map<unknown, unknown>();
    for (let i = 0; i < flat.length; i += 2) map.set(flat[i], flat[i + 1]);
    return map;
  },
});

const _encoderOptions = {
  extensionCodec: _codec,
  useBigInt64: true,
  ignoreUndefined: true,
  // _check bounds containers; the encoder counts scalars as a level too.
  maxDepth: _MAX_DEPTH + 1,
} as const;
const _encoder = new Encoder<_Context>({
  ..._encoderOptions,
  context: { floats: false },
});
// Only for slots that hold a -0: every number as float 64 keeps its sign.
const _floatEncoder = new Encoder<_Context>({
  ..._encoderOptions,
  context: { floats: true },
  forceIntegerToFloat: true,
});
const _decoder = new Decoder<_Context>({
  extensionCodec: _codec,
  useBigInt64: true,
  context: { floats: false },
});

/**
 * Encodes a value as standard MessagePack, for a slot of the context buffer.
 *
 * See the module documentation for the type mapping: JSON values,
 * `Uint8Array`, `Date`, `Map` and `bigint`, nested freely.
 *
 * @example Round trip
 * ```ts
 * import { deserializeSlot, serializeSlot } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const message = {
 *   fromId: "console.router",
 *   sentAt: new Date("2025-01-17T10:32:05.123Z"),
 *   body: new Uint8Array([1, 2, 3]),
 *   seen: new Map([["greeter", 1n]]),
 * };
 * const bytes = serializeSlot(message);
 * assert.deepEqual(deserializeSlot(bytes), message);
 * assert.deepEqual(serializeSlot({ a: 1 }), new Uint8Array([0x81, 0xa1, 0x61, 0x01]));
 * assert.throws(() => serializeSlot({ cb: () => {} }), TypeError);
 * ```
 *
 * @param value The value to encode.
 * @returns The MessagePack bytes, a new `Uint8Array`.
 * @throws {TypeError} If the value holds something MessagePack cannot carry
 * exactly (a function, a symbol, a class instance, `undefined` outside an
 * object property, a sparse array, ...); the message names it and its path.
 * @throws {RangeError} If it holds a `bigint` outside [-2 ** 63, 2 ** 64), an
 * invalid `Date`, or nests deeper than 100 levels (a circular reference, say).
 */
export function serializeSlot(value: unknown): Uint8Array {
  const path: (string | number)[] = [];
  const state = { negativeZero: false };
  _check(value, 0, path, state);
  return (state.negativeZero ? _floatEncoder : _encoder).encode(value);
}

/**
 * Decodes the MessagePack bytes of a slot. Decoding never runs code: only
 * standard MessagePack and the `Map` extension (type 1) are accepted.
 *
 * The type parameter is not checked: it only spares the caller a cast.
 *
 * @example Round trip, and bytes that are not MessagePack
 * ```ts
 * import { deserializeSlot, serializeSlot } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * const slot = serializeSlot({ threadId: "t1", big: 2n ** 63n, ratio: 0.25 });
 * const value = deserializeSlot<{ threadId: string; big: bigint; ratio: number }>(slot);
 * assert.equal(value.big, 2n ** 63n);
 * assert.equal(value.ratio, 0.25);
 *
 * assert.throws(
 *   () => deserializeSlot(new Uint8Array([0x92, 0x01])), // an array of 2 with 1 item
 *   { name: "TypeError", message: /^deserializeSlot: malformed MessagePack/ },
 * );
 * ```
 *
 * @typeParam T The type the caller expects (not verified).
 * @param data The bytes of one slot, as written by {@linkcode serializeSlot}
 * or any standard MessagePack writer.
 * @returns The decoded value: a fresh one, sharing no memory with `data`
 * (each `Uint8Array` in it is a copy in its own `ArrayBuffer`).
 * @throws {TypeError} If `data` is not a `Uint8Array`, or is not exactly one
 * standard MessagePack value (truncated, trailing bytes, an unknown extension
 * type, non-string/number map keys, a `"__proto__"` key, nesting deeper than
 * 100, ...): the message starts with `deserializeSlot: malformed MessagePack`
 * and `cause` holds the underlying error.
 */
export function deserializeSlot<T = unknown>(data: Uint8Array): T {
  if (!(data instanceof Uint8Array)) {
    throw new TypeError(
      `deserializeSlot: data must be a Uint8Array, got ${describe(data)}`,
    );
  }
  try {
    const hasBinaries = _checkNesting(data);
    const value: unknown = _decoder.decode(data);
    // The decoder returns binaries as views into `data`: copy each one.
    return (hasBinaries ? _ownBinaries(value) : value) as T;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new TypeError(`deserializeSlot: malformed MessagePack: ${reason}`, {
      cause: error,
    });
  }
}

// No MessagePack library refuses values it would change (it drops, coerces or
// wraps them), so serializeSlot walks the value first.
function _check(
  value: unknown,
  depth: number,
  path: (string | number)[],
  state: { negativeZero: boolean },
): void {
  switch (typeof value) {
    case "string":
      if (!value.isWellFormed()) {
        _fail(
          TypeError,
          "a string with a lone surrogate (not well-formed Unicode)",
          path,
        );
      }
      return;
    case "number":
      if (value === 0 && 1 / value < 0) state.negativeZero = true;
      return;
    case "boolean":
      return;
    case "bigint":
      if (value < _MIN_INT64 || value > _MAX_UINT64) {
        _fail(
          RangeError,
          `bigint ${value} outside the 64-bit range [-2 ** 63, 2 ** 64)`,
          path,
        );
      }
      return;
    case "object":
      break;
    default:
      _fail(TypeError, describe(value), path);
  }
  if (value === null) return;
  if (depth >= _MAX_DEPTH) {
    _fail(
      RangeError,
      `nesting deeper than ${_MAX_DEPTH} levels (a circular reference?)`,
      path,
    );
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      path.push(i);
      const item: unknown = value[i];
      if (item === undefined) {
        _fail(
          TypeError,
          i in value ? "undefined in an array" : "a hole in a sparse array",
          path,
        );
      }
      _check(item, depth + 1, path, state);
      path.pop();
    }
    return;
  }
  const proto: unknown = Object.getPrototypeOf(value);
  if (proto === Object.prototype || proto === null) {
    if (Object.getOwnPropertySymbols(value).length > 0) {
      _fail(TypeError, "an object with symbol keys", path);
    }
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      path.push(key);
      if (key === "__proto__") {
        _fail(TypeError, 'an own "__proto__" key (use a Map)', path);
      }
      if (!key.isWellFormed()) {
        _fail(
          TypeError,
          "a key with a lone surrogate (not well-formed Unicode)",
          path,
        );
      }
      const item = record[key];
      if (item !== undefined) _check(item, depth + 1, path, state);
      path.pop();
    }
    return;
  }
  if (value instanceof Uint8Array) return;
  if (value instanceof Date) {
    if (proto !== Date.prototype) _fail(TypeError, describe(value), path);
    if (Number.isNaN(value.getTime())) {
      _fail(RangeError, "an invalid Date", path);
    }
    return;
  }
  if (value instanceof Map && proto === Map.prototype) {
    let i = 0;
    for (const [key, item] of value) {
      path.push(`<Map entry ${i}>`);
      if (key === undefined || item === undefined) {
        _fail(TypeError, "undefined as a Map key or value", path);
      }
      _check(key, depth + 1, path, state);
      _check(item, depth + 1, path, state);
      path.pop();
      i++;
    }
    return;
  }
  _fail(TypeError, describe(value), path);
}

function _fail(
  ErrorClass: typeof TypeError | typeof RangeError,
  what: string,
  path: readonly (string | number)[],
): never {
  throw new ErrorClass(
    `serializeSlot: cannot encode ${what} at ${_formatPath(path)}`,
  );
}

function _formatPath(path: readonly (string | number)[]): string {
  let out = "$";
  for (let i = 0; i < path.length; i++) {
    if (i === 8 && path.length > 16) {
      out += "...";
      i = path.length - 8; // a cycle's path is long: keep both ends
    }
    const part = path[i]!;
    if (typeof part === "number") out += `[${part}]`;
    else if (part.startsWith("<Map entry")) out += ` ${part}`;
    else if (/^[A-Za-z_$][\w$]*$/.test(part)) out += `.${part}`;
    else out += `[${JSON.stringify(part)}]`;
  }
  return out;
}

/**
 * Replaces every `Uint8Array` in a decoded value by a copy in its own
 * `ArrayBuffer`. @msgpack/msgpack decodes a bin (and the payload of an
 * extension, so also the binaries of a `Map`) as a `subarray` of its input:
 * a view that would alias the caller's bytes (a Node `Buffer` included),
 * share one `ArrayBuffer` with every other binary of the slot, and keep the
 * whole slot alive. The value is fresh from the decoder: changed in place.
 */
function _ownBinaries(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  if (value instanceof Uint8Array) return copyBytes(value);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      value[i] = _ownBinaries(value[i]);
    }
    return value;
  }
  if (value instanceof Map) {
    // Keys may be binaries too: refill the Map in its order.
    const entries = [...value];
    value.clear();
    for (const [key, item] of entries) {
      value.set(_ownBinaries(key), _ownBinaries(item));
    }
    return value;
  }
  if (value instanceof Date) return value;
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    record[key] = _ownBinaries(record[key]);
  }
  return value;
}

// @msgpack/msgpack's Decoder is iterative and has no depth limit, so a few
// megabytes of 0x91 would decode to millions of nested arrays: count first.
// Only headers are read; the decoder still validates everything. Returns
// whether the value holds a bin (what _ownBinaries must copy): every bin of
// a well-formed value, inside a Map extension too, has its header read here.
function _checkNesting(bytes: Uint8Array): boolean {
  // DataView reads past the end throw a RangeError: the slot is truncated.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const pending: number[] = []; // values still to read in each open container
  const isLevel: boolean[] = []; // false for a Map extension wrapping its array
  let depth = 0;
  let pos = 0;
  let hasBinaries = false;
  while (pos < bytes.byteLength) {
    const token = view.getUint8(pos);
    let items = -1; // >= 0 when this value is a container of that many values
    let nested = false; // a Map extension: its payload is the next value
    if (token <= 0x7f || token >= 0xe0 || (token >= 0xc0 && token <= 0xc3)) {
      pos += 1;
    } else if (token <= 0x8f) {
      items = (token - 0x80) * 2;
      pos += 1;
    } else if (token <= 0x9f) {
      items = token - 0x90;
      pos += 1;
    } else if (token <= 0xbf) {
      pos += 1 + (token - 0xa0);
    } else {
      if (token >= 0xc4 && token <= 0xc6) hasBinaries = true;
      switch (token) {
        case 0xc4: // bin 8, str 8
        case 0xd9:
          pos += 2 + view.getUint8(pos + 1);
          break;
        case 0xc5: // bin 16, str 16
        case 0xda:
          pos += 3 + view.getUint16(pos + 1);
          break;
        case 0xc6: // bin 32, str 32
        case 0xdb:
          pos += 5 + view.getUint32(pos + 1);
          break;
        case 0xc7: // ext 8, 16, 32
        case 0xc8:
        case 0xc9: {
          const head = token === 0xc7 ? 2 : token === 0xc8 ? 3 : 5;
          const size = token === 0xc7
            ? view.getUint8(pos + 1)
            : token === 0xc8
            ? view.getUint16(pos + 1)
            : view.getUint32(pos + 1);
          nested = view.getInt8(pos + head) === _MAP_EXT_TYPE;
          pos += head + 1 + (nested ? 0 : size);
          break;
        }
        case 0xcc: // uint 8, int 8
        case 0xd0:
          pos += 2;
          break;
        case 0xcd: // uint 16, int 16
        case 0xd1:
          pos += 3;
          break;
        case 0xca: // float 32, uint 32, int 32
        case 0xce:
        case 0xd2:
          pos += 5;
          break;
        case 0xcb: // float 64, uint 64, int 64
        case 0xcf:
        case 0xd3:
          pos += 9;
          break;
        case 0xd4: // fixext 1, 2, 4, 8, 16
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
          nested = view.getInt8(pos + 1) === _MAP_EXT_TYPE;
          pos += 2 + (nested ? 0 : 1 << (token - 0xd4));
          break;
        case 0xdc: // array 16, 32
          items = view.getUint16(pos + 1);
          pos += 3;
          break;
        case 0xdd:
          items = view.getUint32(pos + 1);
          pos += 5;
          break;
        case 0xde: // map 16, 32
          items = view.getUint16(pos + 1) * 2;
          pos += 3;
          break;
        case 0xdf:
          items = view.getUint32(pos + 1) * 2;
          pos += 5;
          break;
        default:
          return hasBinaries; // 0xc1 (never used): the decoder reports it
      }
    }
    if (nested || items > 0) {
      pending.push(nested ? 1 : items);
      isLevel.push(!nested);
      if (!nested && ++depth > _MAX_DEPTH) {
        throw new RangeError(
          `nesting deeper than ${_MAX_DEPTH} levels at byte ${pos}`,
        );
      }
      continue;
    }
    // A complete value: close every container it completes.
    while (pending.length > 0 && --pending[pending.length - 1]! === 0) {
      pending.pop();
      if (isLevel.pop()) depth--;
    }
    if (pending.length === 0) return hasBinaries; // the decoder reports trailing bytes
  }
  return hasBinaries;
}
