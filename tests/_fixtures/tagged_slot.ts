// The slot the multi-writer tests append: its bytes say who wrote it, so a
// reader can check that slot i holds the bytes whose append returned i.

/** A slot that says who wrote it: writer and seq, then a pattern of both. */
export function tagged(writer: number, seq: number, size: number): Uint8Array {
  const slot = new Uint8Array(Math.max(size, 8));
  const view = new DataView(slot.buffer);
  view.setUint32(0, writer);
  view.setUint32(4, seq);
  for (let i = 8; i < slot.length; i++) {
    slot[i] = (writer * 131 + seq * 7 + i) & 0xff;
  }
  return slot;
}
