// Image operations that reproduce, pixel for pixel where it matters, what the server does with OpenCV in
// core/faces.py: RGB -> gray (cv2.COLOR_RGB2GRAY), INTER_AREA shrinking, and the aligned 48x48 crop
// (cv2.estimateAffinePartial2D with LMEDS onto FER_TEMPLATE, then warpAffine INTER_LINEAR, BORDER_REPLICATE).
// The browser and the server must classify the same pixels, so each step follows OpenCV's arithmetic.

// Where FER2013's faces have their five landmarks, in 48x48 pixels (core.faces.FER_TEMPLATE).
export const FER_TEMPLATE = [[14.8, 18.4], [32.9, 18.1], [23.8, 28.6], [16.6, 37.5], [31.5, 37.3]];

/** RGBA (canvas ImageData) -> gray Uint8Array, with OpenCV 4's fixed-point weights (15 bits, rounded; checked
 * against cv2.cvtColor on 200,000 random colours: no difference). */
export function grayFromRGBA(rgba, w, h) {
  const out = new Uint8Array(w * h);
  for (let i = 0, j = 0; i < out.length; i++, j += 4) {
    out[i] = (rgba[j] * 9798 + rgba[j + 1] * 19235 + rgba[j + 2] * 3735 + 16384) >> 15;
  }
  return out;
}

/** RGBA -> packed RGB Uint8Array (the detector's input). */
export function rgbFromRGBA(rgba, w, h) {
  const out = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; j < rgba.length; i += 3, j += 4) {
    out[i] = rgba[j]; out[i + 1] = rgba[j + 1]; out[i + 2] = rgba[j + 2];
  }
  return out;
}

// OpenCV's computeResizeAreaTab: which source cells feed each destination cell, with what weight; flat typed
// arrays (start offsets, source index, weight) so the resize loops stay fast.
function areaTab(ssize, dsize) {
  const scale = 1 / (dsize / ssize);
  const start = new Int32Array(dsize + 1), src = [], wt = [];
  for (let d = 0; d < dsize; d++) {
    start[d] = src.length;
    const f1 = d * scale, f2 = f1 + scale, cell = Math.min(scale, ssize - f1);
    const s2 = Math.min(Math.floor(f2), ssize - 1);
    const s1 = Math.min(Math.ceil(f1), s2);
    if (s1 - f1 > 1e-3) { src.push(s1 - 1); wt.push((s1 - f1) / cell); }
    for (let s = s1; s < s2; s++) { src.push(s); wt.push(1 / cell); }
    if (f2 - s2 > 1e-3) { src.push(s2); wt.push(Math.min(Math.min(f2 - s2, 1), cell) / cell); }
  }
  start[dsize] = src.length;
  return { start, src: Int32Array.from(src), wt: Float32Array.from(wt) };
}

// cv2.INTER_AREA when enlarging (the detector's patches of faces under 24 or 48 px): OpenCV's linear resize with
// its "area mode" coefficients, in its 11-bit fixed point.
function areaUpTab(ssize, dsize) {
  const scale = ssize / dsize, inv = dsize / ssize, idx = new Int32Array(dsize * 2), a = new Int32Array(dsize * 2);
  for (let d = 0; d < dsize; d++) {
    let s = Math.floor(d * scale), f = (d + 1) - (s + 1) * inv;
    f = f <= 0 ? 0 : f - Math.floor(f);
    if (s < 0) { f = 0; s = 0; }
    if (s >= ssize - 1) { f = 0; s = ssize - 1; }
    idx[2 * d] = s; idx[2 * d + 1] = Math.min(s + 1, ssize - 1);
    a[2 * d] = Math.round((1 - f) * 2048); a[2 * d + 1] = Math.round(f * 2048);
  }
  return { idx, a };
}

function areaEnlarge(src, sw, sh, ch, dw, dh) {
  const tx = areaUpTab(sw, dw), ty = areaUpTab(sh, dh), out = new Uint8Array(dw * dh * ch);
  const row = (sy) => { // one source row resized horizontally, in 11-bit fixed point
    const r = new Int32Array(dw * ch);
    for (let x = 0; x < dw; x++) {
      const p0 = (sy * sw + tx.idx[2 * x]) * ch, p1 = (sy * sw + tx.idx[2 * x + 1]) * ch;
      for (let c = 0; c < ch; c++) r[x * ch + c] = src[p0 + c] * tx.a[2 * x] + src[p1 + c] * tx.a[2 * x + 1];
    }
    return r;
  };
  for (let y = 0; y < dh; y++) {
    const r0 = row(ty.idx[2 * y]), r1 = row(ty.idx[2 * y + 1]), b0 = ty.a[2 * y], b1 = ty.a[2 * y + 1];
    // the vertical step as OpenCV's SIMD code rounds it (VResizeLinearVec_32s8u)
    for (let i = 0; i < dw * ch; i++) {
      out[y * dw * ch + i] = Math.min(255, ((((r0[i] >> 4) * b0) >> 16) + (((r1[i] >> 4) * b1) >> 16) + 2) >> 2);
    }
  }
  return out;
}

// OpenCV's fast path for whole-number factors: integer sums, 2x2 rounded half up as its SIMD code does.
function areaShrinkInteger(src, sw, sh, ch, dw, dh) {
  const kx = sw / dw, ky = sh / dh, area = kx * ky, out = new Uint8Array(dw * dh * ch);
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      for (let c = 0; c < ch; c++) {
        let sum = 0;
        for (let j = 0; j < ky; j++) {
          for (let i = 0; i < kx; i++) sum += src[((y * ky + j) * sw + x * kx + i) * ch + c];
        }
        const v = sum / area, r = Math.round(v);
        out[(y * dw + x) * ch + c] = area === 4 ? (sum + 2) >> 2 : r - v === 0.5 && r % 2 ? r - 1 : r;
      }
    }
  }
  return out;
}

/** cv2.resize(..., interpolation=INTER_AREA) for uint8 images of `ch` channels (enlarging too).
 * With a window [x0, x1) x [y0, y1) of the destination, only that part is computed (and returned). */
export function areaResize(src, sw, sh, ch, dw, dh, x0 = 0, y0 = 0, x1 = dw, y1 = dh) {
  if (dw > sw || dh > sh) return areaEnlarge(src, sw, sh, ch, dw, dh);
  if (sw % dw === 0 && sh % dh === 0 && x0 === 0 && y0 === 0 && x1 === dw && y1 === dh) {
    return areaShrinkInteger(src, sw, sh, ch, dw, dh); // a webcam's 640x480 to the detector's 320x240
  }
  const tx = areaTab(sw, dw), ty = areaTab(sh, dh), ww = x1 - x0, wh = y1 - y0;
  const out = new Uint8Array(ww * wh * ch);
  const rowH = new Float32Array(ww * ch), acc = new Float32Array(ww * ch);
  for (let y = y0; y < y1; y++) {
    acc.fill(0);
    for (let k = ty.start[y]; k < ty.start[y + 1]; k++) {
      const base = ty.src[k] * sw * ch, wy = ty.wt[k];
      rowH.fill(0);
      for (let x = x0; x < x1; x++) {
        const o = (x - x0) * ch;
        for (let j = tx.start[x]; j < tx.start[x + 1]; j++) {
          const p = base + tx.src[j] * ch, w = tx.wt[j];
          for (let c = 0; c < ch; c++) rowH[o + c] += Math.fround(src[p + c] * w); // float32 steps, as OpenCV
        }
      }
      for (let i = 0; i < acc.length; i++) acc[i] += Math.fround(rowH[i] * wy);
    }
    const o = (y - y0) * ww * ch;
    for (let i = 0; i < acc.length; i++) { // cvRound: to nearest, ties to even
      const v = acc[i], r = Math.round(v);
      out[o + i] = r - v === 0.5 && r % 2 ? r - 1 : r;
    }
  }
  return out;
}

// --- the similarity transform onto FER_TEMPLATE (cv2.estimateAffinePartial2D, method=LMEDS, refineIters=10) -------
// LMEDS: the 2-point model with the smallest median squared error, inliers within sigma of it, then least squares
// over the inliers (OpenCV's Levenberg-Marquardt refinement converges to that, the problem being linear). OpenCV
// draws the 2-point subsets at random; with 5 points there are only 10, so all are tried here.

function fitSimilarity(src, dst) {
  const n = src.length;
  let mx = 0, my = 0, nx = 0, ny = 0;
  for (let i = 0; i < n; i++) { mx += src[i][0]; my += src[i][1]; nx += dst[i][0]; ny += dst[i][1]; }
  mx /= n; my /= n; nx /= n; ny /= n;
  let sa = 0, sb = 0, ss = 0;
  for (let i = 0; i < n; i++) {
    const px = src[i][0] - mx, py = src[i][1] - my, qx = dst[i][0] - nx, qy = dst[i][1] - ny;
    sa += px * qx + py * qy; sb += px * qy - py * qx; ss += px * px + py * py;
  }
  if (ss < 1e-12) return null;
  const a = sa / ss, b = sb / ss;
  return [a, -b, nx - (a * mx - b * my), b, a, ny - (b * mx + a * my)];
}

function sqErrors(m, src, dst) {
  return src.map(([x, y], i) => {
    const u = m[0] * x + m[1] * y + m[2] - dst[i][0], v = m[3] * x + m[4] * y + m[5] - dst[i][1];
    return u * u + v * v;
  });
}

/** 2x3 matrix mapping the face's landmarks onto FER_TEMPLATE, as cv2.estimateAffinePartial2D(LMEDS) finds it. */
export function estimateSimilarity(landmarks, template = FER_TEMPLATE) {
  const n = landmarks.length;
  let best = null, bestMedian = Infinity;
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const m = fitSimilarity([landmarks[i], landmarks[j]], [template[i], template[j]]);
      if (!m) continue;
      const err = sqErrors(m, landmarks, template).sort((p, q) => p - q);
      const median = err[Math.floor(n / 2)];
      if (median < bestMedian) { bestMedian = median; best = m; }
    }
  }
  if (!best) return null;
  const sigma = Math.max(2.5 * 1.4826 * (1 + 5 / (n - 2)) * Math.sqrt(bestMedian), 0.001);
  const err = sqErrors(best, landmarks, template);
  const inl = err.map((e, i) => (e <= sigma * sigma ? i : -1)).filter((i) => i >= 0);
  if (inl.length < 2) return best;
  return fitSimilarity(inl.map((i) => landmarks[i]), inl.map((i) => template[i])) || best;
}

function invertAffine(m) {
  const [a, b, c, d, e, f] = m;
  let det = a * e - b * d;
  det = det !== 0 ? 1 / det : 0;
  const A = e * det, B = -b * det, D = -d * det, E = a * det;
  return [A, B, -A * c - B * f, D, E, -D * c - E * f];
}

/** cv2.warpAffine(gray, m, (48, 48), flags=INTER_LINEAR, borderMode=BORDER_REPLICATE), with OpenCV's fixed point:
 * source positions in 1/32 pixel, bilinear weights in 1/32768. */
export function warpAffine48(gray, w, h, m, size = 48, win = null) {
  // win: {x0, y0, ww} when `gray` holds only a window of the w x h image (columns x0.., rows y0..)
  const ox = win ? win.x0 : 0, oy = win ? win.y0 : 0, stride = win ? win.ww : w;
  const inv = invertAffine(m);
  const out = new Uint8Array(size * size);
  const AB = 1024, ROUND = 16;
  for (let y = 0; y < size; y++) {
    const X0 = Math.round((inv[1] * y + inv[2]) * AB), Y0 = Math.round((inv[4] * y + inv[5]) * AB);
    for (let x = 0; x < size; x++) {
      const X = (X0 + Math.round(inv[0] * x * AB) + ROUND) >> 5, Y = (Y0 + Math.round(inv[3] * x * AB) + ROUND) >> 5;
      const sx = X >> 5, sy = Y >> 5, fx = (X & 31) / 32, fy = (Y & 31) / 32;
      const x0 = Math.min(Math.max(sx, 0), w - 1), x1 = Math.min(Math.max(sx + 1, 0), w - 1);
      const y0 = Math.min(Math.max(sy, 0), h - 1), y1 = Math.min(Math.max(sy + 1, 0), h - 1);
      const w00 = Math.round((1 - fx) * (1 - fy) * 32768), w01 = Math.round(fx * (1 - fy) * 32768);
      const w10 = Math.round((1 - fx) * fy * 32768), w11 = 32768 - w00 - w01 - w10;
      const r0 = (y0 - oy) * stride - ox, r1 = (y1 - oy) * stride - ox;
      const v = gray[r0 + x0] * w00 + gray[r0 + x1] * w01 + gray[r1 + x0] * w10 + gray[r1 + x1] * w11;
      out[y * size + x] = Math.min(255, Math.max(0, (v + 16384) >> 15));
    }
  }
  return out;
}

/** core.faces.crop_aligned: the 48x48 crop whose landmarks best match FER2013's. A big face is shrunk first with
 * INTER_AREA (so the warp stays near 1:1 and does not alias), exactly as the server does. */
export function cropAligned(gray, w, h, landmarks) {
  let m = estimateSimilarity(landmarks);
  if (!m) return null;
  const scale = Math.hypot(m[0], m[1]);
  if (scale < 0.5) {
    const k = 1 / (2 * scale);
    const sw = Math.max(1, roundHalfEven(w / k)), sh = Math.max(1, roundHalfEven(h / k));
    m = [m[0] * k, m[1] * k, m[2], m[3] * k, m[4] * k, m[5]];
    // Only the part of the shrunk image that the warp reads is computed (the server shrinks it all: same pixels).
    const inv = invertAffine(m), xs = [], ys = [];
    for (const [u, v] of [[0, 0], [48, 0], [0, 48], [48, 48]]) {
      xs.push(inv[0] * u + inv[1] * v + inv[2]); ys.push(inv[3] * u + inv[4] * v + inv[5]);
    }
    const clampTo = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
    const x0 = clampTo(Math.floor(Math.min(...xs)) - 2, 0, sw - 1), x1 = clampTo(Math.ceil(Math.max(...xs)) + 3, x0 + 1, sw);
    const y0 = clampTo(Math.floor(Math.min(...ys)) - 2, 0, sh - 1), y1 = clampTo(Math.ceil(Math.max(...ys)) + 3, y0 + 1, sh);
    const part = areaResize(gray, w, h, 1, sw, sh, x0, y0, x1, y1);
    return warpAffine48(part, sw, sh, m, 48, { x0, y0, ww: x1 - x0 });
  }
  return warpAffine48(gray, w, h, m);
}

// Python's round(): ties to even.
export function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
