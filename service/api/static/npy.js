// Reading NumPy's .npy format: the probability map arrives as a float32 H x W array, or as
// K x H x W for a model with K classes.

/** Parse a little-endian float32 .npy file into {data, height, width, maps}: `maps` holds one
 * H x W map per class (K of them), `data` the first. */
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
  const shape = /'shape':\s*\((?:(\d+),\s*)?(\d+),\s*(\d+)\)/.exec(header);
  if (descr !== "<f4" || fortran || !shape) {
    throw new Error(`expected a C-order float32 (K x) H x W array, got ${header.trim()}`);
  }
  const classes = shape[1] === undefined ? 1 : Number(shape[1]);
  const height = Number(shape[2]);
  const width = Number(shape[3]);
  // Copy: the data's offset need not be a multiple of 4, which a Float32Array view requires.
  const all = new Float32Array(buffer.slice(start + headerLength));
  const size = height * width;
  if (all.length !== classes * size) throw new Error("the .npy file is truncated");
  const maps = Array.from({ length: classes }, (_, k) => all.subarray(k * size, (k + 1) * size));
  return { data: maps[0], maps, height, width };
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
