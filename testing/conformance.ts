/**
 * The conformance suite (being written).
 *
 * @module
 */
export {};
