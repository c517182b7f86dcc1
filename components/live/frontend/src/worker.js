// The Live component's inference, in a Web Worker: face detection, the aligned crops and the expression models run
// here, so the page's own thread (shared with the Streamlit app around the component) stays free for drawing and
// for the app's widgets. Messages: init (the MTCNN nets), models (the ONNX files), frame (RGBA pixels) -> result.
import * as ort from "onnxruntime-web/wasm";
import { Mtcnn } from "./mtcnn.js";
import { cropAligned, grayFromRGBA, rgbFromRGBA } from "./imgproc.js";

// The .wasm sits beside this script (built by build.mjs): no CDN, works offline. No cross-origin isolation in
// Streamlit's component frame, so no SharedArrayBuffer: one thread.
ort.env.wasm.wasmPaths = { wasm: new URL("ort-wasm-simd-threaded.wasm", import.meta.url).href };
ort.env.wasm.numThreads = 1;
const SESSION_OPTIONS = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };

let detector = null;
const sessions = {}; // model id -> InferenceSession

function softmax(logits) {
  const m = Math.max(...logits), e = logits.map((v) => Math.exp(v - m)), s = e.reduce((p, q) => p + q, 0);
  return e.map((v) => v / s);
}

async function loadModels(models) {
  for (const { id, bytes } of models) {
    if (!sessions[id]) sessions[id] = await ort.InferenceSession.create(bytes, SESSION_OPTIONS);
  }
  for (const id of Object.keys(sessions)) { // free the sessions no slot uses any more
    if (!models.some((m) => m.id === id)) { sessions[id].release(); delete sessions[id]; }
  }
}

async function frame({ rgba, w, h, minFace, ids }) {
  const t0 = performance.now();
  const found = await detector.faces(rgbFromRGBA(rgba, w, h), w, h, minFace);
  const gray = grayFromRGBA(rgba, w, h);
  const faces = found.map((f) => ({ ...f, crop: cropAligned(gray, w, h, f.landmarks) })).filter((f) => f.crop);
  const t1 = performance.now(), modelMs = {};
  faces.forEach((f) => { f.probs = {}; });
  if (faces.length) {
    const input = new Float32Array(faces.length * 2304);
    faces.forEach((f, i) => input.set(f.crop, i * 2304)); // raw 0-255 gray: the ONNX contract normalises in the graph
    // a frame sent just before a model swap may name a model already released: it is skipped for that frame
    for (const id of ids.filter((i) => sessions[i])) {
      const t = performance.now();
      const res = await sessions[id].run({ image: new ort.Tensor("float32", input, [faces.length, 1, 48, 48]) });
      modelMs[id] = performance.now() - t;
      faces.forEach((f, i) => { f.probs[id] = softmax(Array.from(res.logits.data.subarray(i * 7, i * 7 + 7))); });
    }
  }
  return { faces, detectMs: t1 - t0, modelMs, totalMs: performance.now() - t0 };
}

// One message at a time: a model swap must not release a session that a frame in flight is still using.
let queue = Promise.resolve();
self.onmessage = ({ data }) => { queue = queue.then(() => handle(data)); };

async function handle(data) {
  const { seq, type } = data;
  try {
    let result = null;
    if (type === "init") detector = await Mtcnn.create(ort, data.nets, SESSION_OPTIONS);
    else if (type === "models") await loadModels(data.models);
    else if (type === "frame") result = await frame(data);
    self.postMessage({ seq, ok: true, result });
  } catch (err) {
    self.postMessage({ seq, ok: false, error: String((err && err.message) || err) });
  }
}
