// The slot the multi-writer tests append: its bytes say who wrote it, so a
// reader can check that slot i holds the bytes whose append returned i. The
// conformance suite's own (testing/_fixtures.ts), shared by the writers.

export { tagged } from "../../testing/_fixtures.ts";
