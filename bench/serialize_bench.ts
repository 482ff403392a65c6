/**
 * Which MessagePack library should `serializeSlot`/`deserializeSlot` use?
 *
 * Each group answers one question for a realistic slot (metadata plus a
 * payload) at about 200 B and about 20 KB encoded: JSON.stringify plus
 * TextEncoder (the naive approach) is the baseline, against `npm:msgpackr` and
 * `npm:@msgpack/msgpack`, both configured as they would ship (standard
 * MessagePack: plain maps, no msgpackr records, bigint as int64/uint64), and
 * the shipped `serializeSlot`/`deserializeSlot` (library plus the checks that
 * keep values exact).
 *
 * Run: `deno bench -A bench/serialize_bench.ts`
 *
 * @module
 */

import { Decoder, Encoder } from "@msgpack/msgpack";
// deno-lint-ignore no-import-prefix -- the competitor is measured here only, it is not a dependency
import { Packr, Unpackr } from "npm:msgpackr@^2.1.4";
import { deserializeSlot, serializeSlot } from "../serialize.ts";

const msgpackrOptions = {
  useRecords: false,
  variableMapSize: true,
  moreTypes: false,
  useToJSON: false,
  int64AsType: "bigint",
} as const;
const packr = new Packr(msgpackrOptions);
const unpackr = new Unpackr(msgpackrOptions);
const encoder = new Encoder({ useBigInt64: true });
const decoder = new Decoder({ useBigInt64: true });
const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

function makeSlot(payload: unknown): Record<string, unknown> {
  return {
    threadId: "5f0c9a3e-6b1d-4c1e-9a51-2f7e3c1d8b42",
    fromId: "console.router",
    toId: "console.router.greeter",
    slotIndex: 42,
    timestamp: "2025-01-17T10:32:05.123Z",
    payloadType: "GreetingRequest",
    correlationId: "c-7781",
    replyTo: "console.router",
    payload,
  };
}

const smallSlot = makeSlot({ name: "Ada", text: "Hello there" });
const largeSlot = makeSlot({
  xml: `<greeting lang="en">${
    "<p>Hello, how are you doing today?</p>".repeat(200)
  }</greeting>`,
  items: Array.from({ length: 100 }, (_, i) => ({
    id: i,
    score: i / 7,
    label: `item-${i}`,
    tags: ["alpha", "beta"],
    ok: i % 2 === 0,
  })),
});

const sizes = [
  ["200 B", smallSlot],
  ["20 KB", largeSlot],
] as const;

for (const [size, slot] of sizes) {
  const json = textEncoder.encode(JSON.stringify(slot));
  const packed = packr.pack(slot);
  const encoded = encoder.encode(slot);
  const shipped = serializeSlot(slot);
  console.log(
    `${size} slot: JSON ${json.byteLength} B, msgpackr ${packed.byteLength} B, ` +
      `@msgpack/msgpack ${encoded.byteLength} B, serializeSlot ${shipped.byteLength} B`,
  );

  Deno.bench({
    name: `JSON.stringify + TextEncoder (${size})`,
    group: `encode ${size}`,
    baseline: true,
    fn: () => {
      textEncoder.encode(JSON.stringify(slot));
    },
  });
  Deno.bench({
    name: `msgpackr pack (${size})`,
    group: `encode ${size}`,
    fn: () => {
      packr.pack(slot);
    },
  });
  Deno.bench({
    name: `@msgpack/msgpack encode (${size})`,
    group: `encode ${size}`,
    fn: () => {
      encoder.encode(slot);
    },
  });
  Deno.bench({
    name: `serializeSlot (${size})`,
    group: `encode ${size}`,
    fn: () => {
      serializeSlot(slot);
    },
  });

  Deno.bench({
    name: `TextDecoder + JSON.parse (${size})`,
    group: `decode ${size}`,
    baseline: true,
    fn: () => {
      JSON.parse(textDecoder.decode(json));
    },
  });
  Deno.bench({
    name: `msgpackr unpack (${size})`,
    group: `decode ${size}`,
    fn: () => {
      unpackr.unpack(packed);
    },
  });
  Deno.bench({
    name: `@msgpack/msgpack decode (${size})`,
    group: `decode ${size}`,
    fn: () => {
      decoder.decode(encoded);
    },
  });
  Deno.bench({
    name: `deserializeSlot (${size})`,
    group: `decode ${size}`,
    fn: () => {
      deserializeSlot(shipped);
    },
  });
}
