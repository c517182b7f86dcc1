// Live page frontend: webcam -> MTCNN -> aligned 48x48 gray crops -> one or two expression models, all in
// onnxruntime-web's WebAssembly backend, in the visitor's browser. The server only sends the ONNX files.
import * as ort from "onnxruntime-web/wasm";
import { Mtcnn } from "./mtcnn.js";
import { cropAligned, grayFromRGBA, rgbFromRGBA } from "./imgproc.js";
import { onRender, setComponentValue, setFrameHeight } from "./streamlit.js";

const CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]; // the ONNX contract's order
const COLORS = ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f"];
// The .wasm sits beside this script (built by build.mjs): no CDN, works offline. No cross-origin isolation in
// Streamlit's component iframe, so no SharedArrayBuffer: one thread.
ort.env.wasm.wasmPaths = { wasm: new URL("ort-wasm-simd-threaded.wasm", import.meta.url).href };
ort.env.wasm.numThreads = 1;
const SESSION_OPTIONS = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };

const $ = (id) => document.getElementById(id);
const state = {
  status: "starting", message: "", detector: null, models: {}, slots: [], frames: 0, fps: 0, detectMs: 0,
  modelMs: {}, faces: [], minFace: 40, reported: "", args: null, loading: null,
};
// The last processed frame and its faces, for the tests' and the benchmark's comparison with the server (through
// WebDriver, on the test machine): the frame as PNG, each face's landmarks, 48x48 crop and probabilities.
state.snapshot = () => {
  if (!state.last) return null;
  const c = document.createElement("canvas");
  c.width = state.last.image.width; c.height = state.last.image.height;
  c.getContext("2d").putImageData(state.last.image, 0, 0);
  return { frame: c.toDataURL("image/png"), minFace: state.last.minFace, faces: state.last.faces.map((f) => ({ box: f.box, landmarks: f.landmarks,
    crop: Array.from(f.crop), probs: f.probs })) };
};
state.perFrame = [];
state.resetStats = () => { state.perFrame = []; };
window.liveState = state; // read by the browser tests and bench/live.py through WebDriver; never sent anywhere

function setStatus(status, message) {
  state.status = status;
  state.message = message;
  $("status").textContent = message;
  $("status").className = status === "running" ? "status ok" : status === "starting" ? "status" : "status bad";
  report(true);
}

// Back to Python: status changes at once, and the measured speed once a model has run for a while. Each value
// reruns the page's script on the server, so it is sent rarely, and it is a handful of numbers and words.
function report(force = false) {
  const value = {
    status: state.status, message: state.message.slice(0, 300), fps: round(state.fps, 1),
    detect_ms: round(state.detectMs, 1), faces: state.faces.length,
    models: state.slots.map((s) => ({ id: s.id.slice(0, 200), ms: round(state.modelMs[s.id] || 0, 2),
      top: state.faces[0] && state.faces[0].probs[s.id] ? CLASSES[argmax(state.faces[0].probs[s.id])] : null })),
  };
  const key = JSON.stringify([value.status, value.models.map((m) => m.id)]);
  if (force || key !== state.reported) {
    state.reported = key;
    setComponentValue(value);
  }
}

const round = (v, d) => Math.round(v * 10 ** d) / 10 ** d;
const argmax = (a) => a.reduce((best, v, i) => (v > a[best] ? i : best), 0);
function softmax(logits) {
  const m = Math.max(...logits), e = logits.map((v) => Math.exp(v - m)), s = e.reduce((p, q) => p + q, 0);
  return e.map((v) => v / s);
}

// --- models -------------------------------------------------------------------------------------------------
async function loadModels(args) {
  const wanted = [["a", args.model_a_id, args.model_a_label, args.model_a]];
  if (args.model_b_id) wanted.push(["b", args.model_b_id, args.model_b_label, args.model_b]);
  const slots = [];
  for (const [slot, id, label, bytes] of wanted) {
    if (!state.models[id]) {
      $("status").textContent = `Loading ${label}...`;
      try {
        state.models[id] = await ort.InferenceSession.create(bytes, SESSION_OPTIONS);
      } catch (err) {
        setStatus("model-error", `The model ${label} cannot run in the browser: ${err.message || err}`);
        throw err;
      }
    }
    slots.push({ slot, id, label });
  }
  for (const id of Object.keys(state.models)) { // free sessions no slot uses any more
    if (!slots.some((s) => s.id === id)) { state.models[id].release(); delete state.models[id]; }
  }
  state.slots = slots; // the switch: the next frame uses the new models, with no reload and the camera still on
  state.modelMs = {};
  if (state.status === "running") $("status").textContent = state.message;
  buildPanels();
  state.reportAt = performance.now() + 3000;
}

// --- layout -------------------------------------------------------------------------------------------------
function buildPanels() {
  const box = $("panels");
  box.innerHTML = "";
  box.className = state.slots.length > 1 ? "panels two" : "panels";
  for (const s of state.slots) {
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.innerHTML = `<canvas class="view"></canvas><div class="meta"><b></b> <span class="ms"></span></div>
      <div class="bars"></div>`;
    panel.querySelector("b").textContent = s.label;
    panel.dataset.model = s.id;
    const bars = panel.querySelector(".bars");
    CLASSES.forEach((c) => {
      const row = document.createElement("div");
      row.className = "bar";
      row.innerHTML = `<span class="name">${c}</span><span class="track"><span class="fill"></span></span><span class="pct"></span>`;
      bars.appendChild(row);
    });
    s.panel = panel;
    box.appendChild(panel);
  }
  resize();
}

function resize() {
  setFrameHeight(document.body.scrollHeight + 4);
}

// --- the loop -----------------------------------------------------------------------------------------------
const grab = document.createElement("canvas");
const grabCtx = grab.getContext("2d", { willReadFrequently: true });

async function classify(crops) {
  const n = crops.length, input = new Float32Array(n * 48 * 48);
  crops.forEach((c, i) => input.set(c, i * 2304)); // raw 0-255 gray: the ONNX contract normalises inside the graph
  const out = {};
  for (const s of state.slots) {
    const session = state.models[s.id];
    const t0 = performance.now();
    const res = await session.run({ image: new ort.Tensor("float32", input, [n, 1, 48, 48]) });
    const ms = performance.now() - t0;
    state.modelMs[s.id] = state.modelMs[s.id] ? 0.8 * state.modelMs[s.id] + 0.2 * ms : ms;
    const logits = res.logits.data;
    out[s.id] = crops.map((_, i) => softmax(Array.from(logits.subarray(i * 7, i * 7 + 7))));
  }
  return out;
}

async function processFrame(video) {
  const w = video.videoWidth, h = video.videoHeight;
  const tg = performance.now();
  if (grab.width !== w || grab.height !== h) { grab.width = w; grab.height = h; }
  grabCtx.drawImage(video, 0, 0, w, h);
  const image = grabCtx.getImageData(0, 0, w, h), rgba = image.data;
  const t0 = performance.now();
  const minFace = state.minFace;
  const found = await state.detector.faces(rgbFromRGBA(rgba, w, h), w, h, minFace);
  const gray = grayFromRGBA(rgba, w, h);
  const tc = performance.now();
  const faces = found.map((f) => ({ ...f, crop: cropAligned(gray, w, h, f.landmarks) })).filter((f) => f.crop);
  const t1 = performance.now();
  state.timing = { ...state.detector.timing, grab: t0 - tg, detect: tc - t0, crop: t1 - tc };
  state.detectMs = state.frames ? 0.8 * state.detectMs + 0.2 * (t1 - t0) : t1 - t0;
  const probs = faces.length && state.slots.length ? await classify(faces.map((f) => f.crop)) : {};
  faces.forEach((f, i) => { f.probs = Object.fromEntries(Object.entries(probs).map(([id, p]) => [id, p[i]])); });
  state.faces = faces;
  state.last = { image, faces, minFace };
  state.frames += 1;
  const t2 = performance.now(), per = state.perFrame;
  per.push({ total: t2 - tg, detect: t1 - t0, model: t2 - t1, faces: faces.length }); // for bench/live.py
  if (per.length > 2000) per.splice(0, per.length - 2000);
  draw(w, h);
}

function draw(w, h) {
  const labels = [];
  for (const s of state.slots) {
    const canvas = s.panel.querySelector("canvas");
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; resize(); }
    const ctx = canvas.getContext("2d");
    ctx.save(); // a mirror, as people expect of a webcam; the crops come from the unmirrored frame
    ctx.scale(-1, 1);
    ctx.drawImage(grab, -w, 0, w, h);
    ctx.restore();
    const lw = Math.max(2, Math.round(w / 240)), font = Math.max(14, Math.round(w / 32));
    ctx.font = `bold ${font}px sans-serif`;
    for (const f of state.faces) {
      const p = f.probs[s.id];
      if (!p) continue;
      const k = argmax(p), [x, y, bw, bh] = f.box, mx = w - x - bw;
      ctx.lineWidth = lw;
      ctx.strokeStyle = COLORS[k];
      ctx.strokeRect(mx, y, bw, bh);
      const text = `${CLASSES[k]} ${Math.round(p[k] * 100)}%`;
      labels.push({ model: s.id, text });
      const tw = ctx.measureText(text).width + 8;
      const ty = y > font + 6 ? y - font - 6 : y + bh;
      ctx.fillStyle = COLORS[k];
      ctx.fillRect(mx - lw / 2, ty, tw, font + 6);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, mx + 4 - lw / 2, ty + font);
    }
    const largest = state.faces[0] && state.faces[0].probs[s.id];
    s.panel.querySelectorAll(".bar").forEach((row, i) => {
      const v = largest ? largest[i] : 0;
      row.querySelector(".fill").style.width = `${(v * 100).toFixed(1)}%`;
      row.querySelector(".fill").style.background = largest && i === argmax(largest) ? COLORS[i] : "#b8c4d6";
      row.querySelector(".pct").textContent = largest ? `${Math.round(v * 100)}%` : "";
    });
    s.panel.querySelector(".ms").textContent = state.modelMs[s.id] ? `model ${state.modelMs[s.id].toFixed(1)} ms per frame` : "";
  }
  state.labels = labels;
  $("stats").textContent = `${state.fps.toFixed(1)} fps · face detection ${state.detectMs.toFixed(0)} ms · `
    + `${state.faces.length} face${state.faces.length === 1 ? "" : "s"}`
    + (state.faces.length ? "" : " (none found: face the camera, in good light)");
}

async function loop(video, frameInterval) {
  const times = [];
  for (;;) {
    const start = performance.now();
    if (state.detector && state.slots.length && video.readyState >= 2 && !state.paused) {
      try {
        await processFrame(video);
      } catch (err) {
        setStatus("error", `Live inference stopped: ${err.message || err}`);
        return;
      }
      times.push(performance.now());
      while (times.length && times[0] < performance.now() - 2000) times.shift();
      state.fps = times.length > 1 ? (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000) : 0;
      if (state.reportAt && performance.now() > state.reportAt) { state.reportAt = 0; report(true); }
    }
    // at most one frame per camera frame: faster would count the same picture twice
    await new Promise((r) => setTimeout(r, Math.max(0, start + frameInterval - performance.now())));
  }
}

// --- start-up and the fallbacks -------------------------------------------------------------------------------
function hasWasm() {
  try {
    return typeof WebAssembly === "object" && WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
  } catch { return false; }
}

const CAMERA_MESSAGES = {
  NotAllowedError: ["denied", "Camera permission was denied. Allow the camera for this site (the icon in the address "
    + "bar) and reload, or use snapshot mode below."],
  SecurityError: ["denied", "The browser blocks the camera here (it needs https or localhost). Use snapshot mode below."],
  NotFoundError: ["no-camera", "No camera found on this device. Use snapshot mode below with a photo instead."],
  OverconstrainedError: ["no-camera", "The camera cannot deliver video. Use snapshot mode below."],
  NotReadableError: ["no-camera", "The camera is busy (another app or tab uses it). Close that and reload, or use "
    + "snapshot mode below."],
};

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("no-camera", "This browser gives no camera access here (it needs https or localhost). Use snapshot "
      + "mode below.");
    return null;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 },
      facingMode: "user" }, audio: false });
    const video = $("video");
    video.srcObject = stream;
    await video.play();
    const rate = stream.getVideoTracks()[0].getSettings().frameRate || 30;
    return { video, frameInterval: 1000 / Math.min(60, rate) };
  } catch (err) {
    const [status, message] = CAMERA_MESSAGES[err.name] || ["no-camera", `The camera could not start (${err.name}: `
      + `${err.message}). Use snapshot mode below.`];
    setStatus(status, message);
    return null;
  }
}

async function start() {
  const args = state.args;
  if (!hasWasm()) {
    setStatus("no-wasm", "This browser has no WebAssembly, which live mode needs. Use snapshot mode below.");
    return;
  }
  try {
    $("status").textContent = "Loading the face detector...";
    state.detector = await Mtcnn.create(ort, { pnet: args.pnet, rnet: args.rnet, onet: args.onet }, SESSION_OPTIONS);
    await loadModels(state.args);
  } catch (err) {
    if (state.status === "starting") setStatus("no-wasm", `onnxruntime-web could not start: ${err.message || err}. `
      + "Use snapshot mode below.");
    return;
  }
  $("status").textContent = "Waiting for the camera (allow it when the browser asks)...";
  const cam = await startCamera();
  if (!cam) return;
  setStatus("running", "Live: faces are found and classified in this browser.");
  loop(cam.video, cam.frameInterval);
}

const modelKey = (a, b) => `${a || ""}|${b || ""}`;
const slotKey = () => modelKey(state.slots[0] && state.slots[0].id, state.slots[1] && state.slots[1].id);
let started = false;
onRender((args) => {
  state.args = args;
  state.minFace = args.min_face || 40; // the detector's smallest face: applies from the next frame
  if (!started) { started = true; start(); return; }
  // a new model chosen on the page: load it beside the running loop, then swap (camera and page stay as they are)
  if (state.detector && modelKey(args.model_a_id, args.model_b_id) !== slotKey()) {
    state.loading = (state.loading || Promise.resolve()).then(() => {
      if (modelKey(state.args.model_a_id, state.args.model_b_id) !== slotKey()) return loadModels(state.args);
    }).then(() => report(true), () => {});
  }
});
new ResizeObserver(resize).observe(document.body);
