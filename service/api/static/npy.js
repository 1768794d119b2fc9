// Reading NumPy's .npy format: the probability map arrives as a float32 H x W array.

/** Parse a little-endian float32 2-D .npy file into {data, height, width}. */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.slice(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const major = bytes[6];
  const view = new DataView(buffer);
  // Version 1 has a 2-byte header length; versions 2 and 3 have 4 bytes.
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.slice(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = /'shape':\s*\((\d+),\s*(\d+)\)/.exec(header);
  if (descr !== "<f4" || fortran || !shape) {
    throw new Error(`expected a C-order float32 H x W array, got ${header.trim()}`);
  }
  const height = Number(shape[1]);
  const width = Number(shape[2]);
  // Copy: the data's offset need not be a multiple of 4, which a Float32Array view requires.
  const data = new Float32Array(buffer.slice(start + headerLength));
  if (data.length !== height * width) throw new Error("the .npy file is truncated");
  return { data, height, width };
}

/** The smallest and largest value of `data`. */
export function valueRange(data) {
  let low = Infinity;
  let high = -Infinity;
  for (let i = 0; i < data.length; i += 1) {
    const value = data[i];
    if (value < low) low = value;
    if (value > high) high = value;
  }
  return [low, high];
}
