import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { deserializeSlot, serializeSlot } from "../serialize.ts";

function roundTrip<T>(value: T): unknown {
  return deserializeSlot(serializeSlot(value));
}

function bytes(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

/** Asserts that `fn` throws the one error deserializeSlot promises for bad bytes. */
function assertMalformed(fn: () => unknown): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof TypeError, `expected a TypeError, got ${error}`);
    assert.match(error.message, /^deserializeSlot: malformed MessagePack: /);
    assert.ok(error.cause instanceof Error, "the library error is the cause");
    return true;
  });
}

Deno.test("serializeSlot() writes standard MessagePack", async (t) => {
  const cases: [string, unknown, Uint8Array][] = [
    ['{"a":1}', { a: 1 }, bytes(0x81, 0xa1, 0x61, 0x01)],
    ["null", null, bytes(0xc0)],
    ["false and true", [false, true], bytes(0x92, 0xc2, 0xc3)],
    ["127 (positive fixint)", 127, bytes(0x7f)],
    ["128 (uint 8)", 128, bytes(0xcc, 0x80)],
    ["256 (uint 16)", 256, bytes(0xcd, 0x01, 0x00)],
    ["65536 (uint 32)", 65536, bytes(0xce, 0x00, 0x01, 0x00, 0x00)],
    ["-1 (negative fixint)", -1, bytes(0xff)],
    ["-33 (int 8)", -33, bytes(0xd0, 0xdf)],
    ["-129 (int 16)", -129, bytes(0xd1, 0xff, 0x7f)],
    ["1.5 (float 64)", 1.5, bytes(0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0)],
    ["2 ** 40 (float 64)", 2 ** 40, bytes(0xcb, 0x42, 0x70, 0, 0, 0, 0, 0, 0)],
    ['"abc" (fixstr)', "abc", bytes(0xa3, 0x61, 0x62, 0x63)],
    ['"é" (UTF-8)', "é", bytes(0xa2, 0xc3, 0xa9)],
    ["a Uint8Array (bin 8)", bytes(1, 2, 3), bytes(0xc4, 0x03, 1, 2, 3)],
    ["2n ** 63n (uint 64)", 2n ** 63n, bytes(0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0)],
    [
      "-1n (int 64)",
      -1n,
      bytes(0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    ],
    ["the epoch (timestamp 32)", new Date(0), bytes(0xd6, 0xff, 0, 0, 0, 0)],
    [
      "1 ms after the epoch (timestamp 64)",
      new Date(1),
      bytes(0xd7, 0xff, 0x00, 0x3d, 0x09, 0x00, 0, 0, 0, 0),
    ],
    [
      "1 ms before the epoch (timestamp 96)",
      new Date(-1),
      bytes(0xc7, 0x0c, 0xff, 0x3b, 0x8b, 0x87, 0xc0, ...Array(8).fill(0xff)),
    ],
    [
      'Map { "a" => 1 } (extension type 1 holding ["a", 1])',
      new Map([["a", 1]]),
      bytes(0xd6, 0x01, 0x92, 0xa1, 0x61, 0x01),
    ],
  ];
  for (const [name, value, expected] of cases) {
    await t.step(
      `${name} is encoded as ${
        Array.from(expected, (b) => b.toString(16)).join(" ")
      }`,
      () => {
        assert.deepEqual(serializeSlot(value), expected);
      },
    );
  }

  await t.step(
    "a 32-byte string uses str 8 and a 16-item array uses array 16",
    () => {
      assert.deepEqual(
        serializeSlot("x".repeat(32)).subarray(0, 2),
        bytes(0xd9, 32),
      );
      assert.deepEqual(
        serializeSlot(Array(16).fill(0)).subarray(0, 3),
        bytes(0xdc, 0, 16),
      );
    },
  );

  await t.step(
    "hand-written standard bytes from another writer decode to the same values",
    () => {
      assert.deepEqual(
        deserializeSlot(
          bytes(0x82, 0xa1, 0x61, 0x01, 0xa1, 0x62, 0x92, 0xc3, 0xc0),
        ),
        {
          a: 1,
          b: [true, null],
        },
      );
      // float 32, which this module never writes
      assert.equal(deserializeSlot(bytes(0xca, 0x3f, 0xc0, 0x00, 0x00)), 1.5);
      // A uint 64 from another writer is a bigint, whatever its size.
      assert.equal(deserializeSlot(bytes(0xcf, 0, 0, 0, 0, 0, 0, 0, 5)), 5n);
    },
  );
});

Deno.test("deserializeSlot() round-trips every supported type", async (t) => {
  await t.step("JSON values come back deep-equal", () => {
    const value = {
      s: "hello, 世界 🌍",
      n: 42,
      f: -0.1,
      t: true,
      z: null,
      list: [1, "two", [3, { four: 4 }]],
      empty: { o: {}, a: [] as unknown[], s: "" },
    };
    assert.deepEqual(roundTrip(value), value);
  });

  await t.step(
    "numbers stay numbers: large safe integers, unsafe integers, floats, NaN, infinities",
    () => {
      const numbers = [
        0,
        2 ** 31,
        2 ** 32,
        2 ** 40,
        -(2 ** 40),
        Number.MAX_SAFE_INTEGER,
        Number.MIN_SAFE_INTEGER,
        2 ** 60,
        0.1,
        Number.MAX_VALUE,
        Number.MIN_VALUE,
        NaN,
        Infinity,
        -Infinity,
      ];
      const back = roundTrip(numbers) as unknown[];
      assert.deepEqual(back, numbers);
      for (const item of back) assert.equal(typeof item, "number");
    },
  );

  await t.step(
    "-0 keeps its sign, and the integers beside it stay numbers",
    () => {
      assert.ok(Object.is(roundTrip(-0), -0));
      const back = roundTrip({ x: -0, list: [1, 2 ** 40, -5] }) as {
        x: number;
        list: number[];
      };
      assert.ok(Object.is(back.x, -0));
      assert.deepEqual(back.list, [1, 2 ** 40, -5]);
      assert.ok(Object.is(roundTrip(0), 0));
    },
  );

  await t.step("bigints in the 64-bit range come back as bigints", () => {
    const values = [
      0n,
      1n,
      -1n,
      2n ** 40n,
      -(2n ** 63n),
      2n ** 63n - 1n,
      2n ** 63n,
      2n ** 64n - 1n,
    ];
    const back = roundTrip(values) as unknown[];
    assert.deepEqual(back, values);
    for (const item of back) assert.equal(typeof item, "bigint");
  });

  await t.step(
    "a Uint8Array comes back as a plain Uint8Array, a Buffer too",
    () => {
      const back = roundTrip({
        raw: bytes(0, 255, 0),
        empty: new Uint8Array(0),
      }) as Record<string, unknown>;
      assert.deepEqual(back, {
        raw: bytes(0, 255, 0),
        empty: new Uint8Array(0),
      });
      const fromBuffer = roundTrip(Buffer.from([1, 2, 3]));
      assert.equal(Object.getPrototypeOf(fromBuffer), Uint8Array.prototype);
      assert.deepEqual(fromBuffer, bytes(1, 2, 3));
    },
  );

  await t.step("decoded bytes do not share memory with the input", () => {
    const slot = serializeSlot({ raw: bytes(7, 7, 7) });
    const back = deserializeSlot<{ raw: Uint8Array }>(slot);
    slot.fill(0);
    assert.deepEqual(back.raw, bytes(7, 7, 7));
    back.raw[0] = 9;
    assert.deepEqual(deserializeSlot(serializeSlot({ raw: bytes(7, 7, 7) })), {
      raw: bytes(7, 7, 7),
    });
  });

  await t.step(
    "decoding a Node Buffer returns binaries that own their bytes, on every path (issue 10 defect 3)",
    () => {
      const key = bytes(4, 4);
      const value = {
        top: bytes(1, 1, 1),
        list: [bytes(2, 2), [bytes(3)]],
        map: new Map<unknown, unknown>([[key, bytes(5, 5)], ["k", {
          deep: bytes(6),
        }]]),
        empty: new Uint8Array(0),
      };
      // A Buffer from Node's pool: a view into a larger shared ArrayBuffer.
      const buffer = Buffer.from(serializeSlot(value));
      const back = deserializeSlot<typeof value>(buffer);
      const binaries: Uint8Array[] = [
        back.top,
        back.list[0] as Uint8Array,
        (back.list[1] as Uint8Array[])[0]!,
        ...[...back.map.keys()].filter((k) => k instanceof Uint8Array),
        back.map.get([...back.map.keys()][0]) as Uint8Array,
        (back.map.get("k") as { deep: Uint8Array }).deep,
        back.empty,
      ];
      assert.equal(binaries.length, 7);
      for (const binary of binaries) {
        assert.equal(Object.getPrototypeOf(binary), Uint8Array.prototype);
        assert.equal(binary.byteOffset, 0, "not a view into a larger buffer");
        assert.equal(binary.buffer.byteLength, binary.byteLength);
      }
      assert.equal(new Set(binaries.map((b) => b.buffer)).size, 7);
      buffer.fill(0xee);
      assert.deepEqual(back, value, "the caller's later writes change nothing");
      // Transferring one binary leaves the others whole.
      structuredClone(back.top, { transfer: [back.top.buffer as ArrayBuffer] });
      assert.equal(back.top.byteLength, 0);
      assert.deepEqual(back.list[0], bytes(2, 2));
    },
  );

  await t.step(
    "Dates come back to the millisecond, before and after the epoch and far out",
    () => {
      const dates = [
        new Date("2025-01-17T10:32:05.123Z"),
        new Date(0),
        new Date(-1),
        new Date("1900-06-01T00:00:00.999Z"),
        new Date(8.64e15),
        new Date(-8.64e15),
      ];
      const back = roundTrip(dates) as Date[];
      assert.deepEqual(back, dates);
      for (const date of back) assert.ok(date instanceof Date);
    },
  );

  await t.step(
    "Maps and plain objects both come back as what they were",
    () => {
      const key = { id: 1 };
      const value = {
        map: new Map<unknown, unknown>([
          ["a", 1],
          [2, "two"],
          [3n, [new Date(5)]],
          [key, new Map([["inner", bytes(1)]])],
        ]),
        object: { a: 1, "2": "two" },
        empty: new Map(),
      };
      const back = roundTrip(value) as typeof value;
      assert.deepEqual(back, value);
      assert.ok(back.map instanceof Map);
      assert.ok(!(back.object instanceof Map));
      assert.deepEqual([...back.map.keys()].slice(0, 3), ["a", 2, 3n]);
    },
  );

  await t.step(
    "a realistic slot with metadata and a payload round-trips",
    () => {
      const slot = {
        threadId: "5f0c9a3e-6b1d-4c1e-9a51-2f7e3c1d8b42",
        fromId: "console.router",
        toId: "console.router.greeter",
        slotIndex: 42,
        timestamp: new Date().toISOString(),
        payloadType: "GreetingRequest",
        payload: {
          xml: "<greeting>Hi</greeting>",
          attachments: [bytes(1, 2)],
          seq: 2n ** 62n,
        },
      };
      assert.deepEqual(roundTrip(slot), slot);
    },
  );

  await t.step(
    "nesting of 100 levels round-trips, arrays and Maps alike",
    () => {
      let array: unknown = "leaf";
      let map: unknown = "leaf";
      for (let i = 0; i < 100; i++) {
        array = [array];
        map = new Map([[i, map]]);
      }
      assert.deepEqual(roundTrip(array), array);
      assert.deepEqual(roundTrip(map), map);
    },
  );

  await t.step(
    "a null-prototype object comes back with the same entries",
    () => {
      const value = Object.assign(
        Object.create(null) as Record<string, unknown>,
        { a: 1 },
      );
      assert.deepEqual({ ...(roundTrip(value) as object) }, { a: 1 });
    },
  );
});

Deno.test("serializeSlot() refuses what it cannot represent exactly", async (t) => {
  await t.step(
    "an object property set to undefined is left out, as JSON.stringify does",
    () => {
      const back = roundTrip({ a: undefined, b: 1 }) as Record<string, unknown>;
      assert.deepEqual(back, { b: 1 });
      assert.ok(!("a" in back));
    },
  );

  const typeErrors: [string, () => unknown, RegExp][] = [
    ["undefined at the top level", () => undefined, /undefined at \$$/],
    [
      "undefined in an array",
      () => [1, undefined],
      /undefined in an array at \$\[1\]/,
    ],
    [
      "a hole in a sparse array",
      () => ({ list: [1, , 3] }),
      /hole in a sparse array at \$\.list\[1\]/,
    ],
    [
      "a function",
      () => ({ payload: { cb: () => 1 } }),
      /a function at \$\.payload\.cb/,
    ],
    [
      "a symbol",
      () => ({ "odd key": Symbol("s") }),
      /a symbol at \$\["odd key"\]/,
    ],
    ["symbol keys", () => ({ [Symbol("k")]: 1 }), /symbol keys at \$/],
    ["a class instance", () => [
      new (class Point {
        x = 1;
      })(),
    ], /instance of Point at \$\[0\]/],
    ["a Set", () => new Set([1]), /instance of Set/],
    ["a RegExp", () => /x/, /instance of RegExp/],
    ["an Error", () => new Error("e"), /instance of Error/],
    ["an ArrayBuffer", () => new ArrayBuffer(2), /instance of ArrayBuffer/],
    [
      "a Float64Array",
      () => new Float64Array([1.5]),
      /instance of Float64Array/,
    ],
    ["an Int8Array", () => new Int8Array([1]), /instance of Int8Array/],
    [
      "a DataView",
      () => new DataView(new ArrayBuffer(1)),
      /instance of DataView/,
    ],
    ["a boxed string", () => new String("s"), /instance of String/],
    [
      "a Map subclass",
      () => new (class Registry extends Map {})(),
      /instance of Registry/,
    ],
    [
      "undefined as a Map value",
      () => new Map([["k", undefined]]),
      /undefined as a Map key or value/,
    ],
    [
      "an own __proto__ key",
      () => JSON.parse('{"__proto__": 1}'),
      /own "__proto__" key \(use a Map\)/,
    ],
    [
      "a lone surrogate in a string",
      () => ({ s: "a\ud800" }),
      /lone surrogate.* at \$\.s/,
    ],
    [
      "a lone surrogate in a key",
      () => ({ ["\udc00"]: 1 }),
      /key with a lone surrogate/,
    ],
  ];
  for (const [name, make, message] of typeErrors) {
    await t.step(`${name} is a TypeError naming it`, () => {
      assert.throws(() => serializeSlot(make()), (error: unknown) => {
        assert.ok(
          error instanceof TypeError,
          `expected a TypeError, got ${error}`,
        );
        assert.match(error.message, /^serializeSlot: cannot encode /);
        assert.match(error.message, message);
        return true;
      });
    });
  }

  const rangeErrors: [string, () => unknown, RegExp][] = [
    [
      "2n ** 64n",
      () => ({ n: 2n ** 64n }),
      /bigint 18446744073709551616 outside the 64-bit range.* at \$\.n/,
    ],
    [
      "-(2n ** 63n) - 1n",
      () => [-(2n ** 63n) - 1n],
      /bigint -9223372036854775809 outside/,
    ],
    [
      "an invalid Date",
      () => ({ at: new Date(NaN) }),
      /an invalid Date at \$\.at/,
    ],
    ["101 levels of nesting", () => {
      let value: unknown = 1;
      for (let i = 0; i < 101; i++) value = [value];
      return value;
    }, /nesting deeper than 100 levels/],
    ["a circular reference", () => {
      const node: Record<string, unknown> = {};
      node.self = node;
      return node;
    }, /circular reference.*\$\.self\.self.*\.\.\./],
  ];
  for (const [name, make, message] of rangeErrors) {
    await t.step(`${name} is a RangeError naming it`, () => {
      assert.throws(() => serializeSlot(make()), (error: unknown) => {
        assert.ok(
          error instanceof RangeError,
          `expected a RangeError, got ${error}`,
        );
        assert.match(error.message, message);
        return true;
      });
    });
  }
});

Deno.test("deserializeSlot() rejects malformed bytes with one clear error", async (t) => {
  await t.step(
    "input that is not a Uint8Array is a TypeError naming data",
    () => {
      for (
        const data of [
          "\x81",
          [0x81],
          new ArrayBuffer(1),
          null,
          undefined,
          new Uint16Array(1),
        ]
      ) {
        assert.throws(
          () => deserializeSlot(data as unknown as Uint8Array),
          {
            name: "TypeError",
            message: /^deserializeSlot: data must be a Uint8Array, got /,
          },
        );
      }
    },
  );

  const cases: [string, Uint8Array][] = [
    ["empty input", new Uint8Array(0)],
    ["a truncated array", bytes(0x92, 0x01)],
    ["a truncated string", bytes(0xa5, 0x61, 0x62)],
    ["a truncated float", bytes(0xcb, 0x3f)],
    ["trailing bytes after a complete value", bytes(0x01, 0x02)],
    [
      "trailing bytes after a complete slot",
      new Uint8Array([...serializeSlot({ a: 1 }), 0xc0]),
    ],
    ["the never-used byte 0xc1", bytes(0xc1)],
    ["a str 32 declaring 4 GiB", bytes(0xdb, 0xff, 0xff, 0xff, 0xff, 0x61)],
    ["a bin 32 declaring 4 GiB", bytes(0xc6, 0xff, 0xff, 0xff, 0xff, 0x00)],
    [
      "an array 32 declaring 4 billion items",
      bytes(0xdd, 0xff, 0xff, 0xff, 0xff, 0x01),
    ],
    [
      "a map 32 declaring 4 billion entries",
      bytes(0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 0x61),
    ],
    ["an ext 32 declaring 4 GiB", bytes(0xc9, 0xff, 0xff, 0xff, 0xff, 0x05)],
    ["an unknown extension type", bytes(0xd4, 0x05, 0x00)],
    [
      "msgpackr's record extension",
      bytes(0xd4, 0x72, 0x40, 0x91, 0xa1, 0x61, 0x40, 0x01),
    ],
    ["msgpackr's undefined (extension 0)", bytes(0xd4, 0x00, 0x00)],
    ["a timestamp of the wrong size", bytes(0xd5, 0xff, 0x00, 0x00)],
    ["a Map extension that holds no array", bytes(0xd4, 0x01, 0x05)],
    [
      "a Map extension with an odd number of items",
      bytes(0xd5, 0x01, 0x91, 0x01),
    ],
    [
      "a Map extension with trailing bytes",
      bytes(0xd6, 0x01, 0x90, 0x01, 0x02, 0x03),
    ],
    ["a map key that is an array", bytes(0x81, 0x90, 0x01)],
    [
      "a __proto__ key",
      new Uint8Array([
        0x81,
        0xa9,
        ...new TextEncoder().encode("__proto__"),
        0x01,
      ]),
    ],
    ["101 nested arrays", new Uint8Array([...Array(101).fill(0x91), 0x01])],
    [
      "101 nested Maps",
      (() => {
        let inner = bytes(0x01);
        for (let i = 0; i < 101; i++) {
          const flat = new Uint8Array([0x92, 0x00, ...inner]);
          inner = new Uint8Array([
            0xc9,
            0,
            0,
            ...[flat.length >> 8, flat.length & 0xff],
            0x01,
            ...flat,
          ]);
        }
        return inner;
      })(),
    ],
  ];
  for (const [name, data] of cases) {
    await t.step(
      `${name} is malformed`,
      () => assertMalformed(() => deserializeSlot(data)),
    );
  }

  await t.step(
    "4 MiB of nested array headers fail fast instead of building 4 million arrays",
    () => {
      const start = performance.now();
      assertMalformed(() =>
        deserializeSlot(new Uint8Array(4 << 20).fill(0x91))
      );
      assert.ok(performance.now() - start < 2_000, "took over 2 s");
    },
  );

  await t.step(
    "2000 random inputs and 2000 corrupted slots only ever raise the clear error",
    () => {
      let seed = 0x5eed;
      const random = () => {
        // mulberry32: a seeded generator, so a failure can be replayed
        seed = (seed + 0x6d2b79f5) | 0;
        let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
        x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
        return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
      };
      const valid = serializeSlot({
        a: [1, 2 ** 40, -0.5, "text", bytes(1, 2)],
        m: new Map<unknown, unknown>([[1, new Date(3)], ["k", 2n ** 63n]]),
      });
      const inputs: Uint8Array[] = [];
      for (let i = 0; i < 2000; i++) {
        inputs.push(
          Uint8Array.from(
            { length: Math.floor(random() * 48) },
            () => Math.floor(random() * 256),
          ),
        );
        const corrupted = valid.slice(
          0,
          1 + Math.floor(random() * valid.length),
        );
        for (let flips = 1 + Math.floor(random() * 3); flips > 0; flips--) {
          corrupted[Math.floor(random() * corrupted.length)] = Math.floor(
            random() * 256,
          );
        }
        inputs.push(corrupted);
      }
      let decoded = 0;
      for (const input of inputs) {
        try {
          deserializeSlot(input);
          decoded++;
        } catch (error) {
          assert.ok(error instanceof TypeError, `${error} for ${input}`);
          assert.match(
            error.message,
            /^deserializeSlot: malformed MessagePack: /,
            `for ${input}`,
          );
          assert.ok(error.cause instanceof Error);
        }
      }
      // Some random inputs are valid MessagePack; most are not.
      assert.ok(
        decoded < inputs.length / 2,
        `${decoded} of ${inputs.length} decoded`,
      );
    },
  );
});
