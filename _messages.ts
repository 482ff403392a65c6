// How values and caught errors are worded in error messages: one wording for
// every module, so the same mistake reads the same wherever it is caught.
// Never put a value's content (a slot, a password) in a message: only its kind.

/**
 * A short description of a value's kind, for "expected X, got Y" messages:
 * `an empty string`, `a string`, `the number 5`, `an instance of Set`, ...
 * Strings are not quoted (they may be long or secret).
 */
export function describe(value: unknown): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "string":
      return value === "" ? "an empty string" : "a string";
    case "undefined":
      return "undefined";
    case "function":
      return "a function";
    case "symbol":
      return "a symbol";
    case "number":
    case "boolean":
      return `the ${typeof value} ${String(value)}`;
    case "bigint":
      return `the bigint ${String(value)}n`;
    default: {
      if (Array.isArray(value)) return "an array";
      const name = (value as { constructor?: { name?: unknown } }).constructor
        ?.name;
      return typeof name === "string" && name !== ""
        ? `an instance of ${name}`
        : "an object without a class";
    }
  }
}

/** The message of anything thrown: an `Error`'s message, else its string form. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A string in double quotes, shortened to `max` characters, for a message. */
export function quote(value: string, max = 80): string {
  return JSON.stringify(
    value.length > max ? `${value.slice(0, max - 3)}...` : value,
  );
}
