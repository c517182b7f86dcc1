// Live page frontend: webcam -> MTCNN -> aligned 48x48 gray crops -> one or two expression models, all in
// onnxruntime-web's WebAssembly backend, in the visitor's browser. The server only sends the ONNX files.
// This thread grabs frames and draws; worker.js detects and classifies.
import { onRender, setComponentValue, setFrameHeight } from "./streamlit.js";

const CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]; // the ONNX contract's order
const COLORS = ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f"];

// --- the worker: one request at a time, answered in order ------------------------------------------------------
let worker = null, seq = 0;
const pending = new Map();
function call(type, payload = {}, transfer = []) {
  return new Promise((resolve, reject) => {
    seq += 1;
    pending.set(seq, { resolve, reject });
    worker.postMessage({ seq, type, ...payload }, transfer);
  });
}
function startWorker() {
  worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
  worker.onmessage = ({ data }) => {
    const p = pending.get(data.seq);
    pending.delete(data.seq);
    if (p) (data.ok ? p.resolve(data.result) : p.reject(new Error(data.error)));
  };
  worker.onerror = (e) => { for (const p of pending.values()) p.reject(new Error(e.message || "worker failed")); };
}

const $ = (id) => document.getElementById(id);
const RUNNING = "Live: faces are found and classified in this browser.";
const state = {
  status: "starting", message: "", ready: false, slots: [], frames: 0, fps: 0, detectMs: 0,
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

// --- models -------------------------------------------------------------------------------------------------
async function loadModels(args) {
  const wanted = [["a", args.model_a_id, args.model_a_label, args.model_a]];
  if (args.model_b_id) wanted.push(["b", args.model_b_id, args.model_b_label, args.model_b]);
  $("status").textContent = `Loading ${wanted.map((w) => w[2]).join(" and ")}...`;
  try {
    await call("models", { models: wanted.map(([, id, , bytes]) => ({ id, bytes })) });
  } catch (err) {
    setStatus("model-error", `The model cannot run in the browser: ${err.message || err}`);
    throw err;
  }
  state.slots = wanted.map(([slot, id, label]) => ({ slot, id, label })); // the switch: from the next frame on,
  state.modelMs = {}; // with no reload and the camera still on
  if (state.status === "running") $("status").textContent = state.message;
  if (state.status === "model-error") setStatus("running", RUNNING); // a working model picked after one that failed
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

async function processFrame(video) {
  const tg = performance.now();
  const w = video.videoWidth, h = video.videoHeight;
  if (grab.width !== w || grab.height !== h) { grab.width = w; grab.height = h; }
  grabCtx.drawImage(video, 0, 0, w, h);
  const image = grabCtx.getImageData(0, 0, w, h), minFace = state.minFace, ids = state.slots.map((s) => s.id);
  const rgba = image.data.slice(); // a copy goes to the worker; the frame itself stays for the snapshot below
  const r = await call("frame", { rgba, w, h, minFace, ids }, [rgba.buffer]);
  const ema = (old, v) => (old ? 0.8 * old + 0.2 * v : v);
  state.detectMs = ema(state.frames && state.detectMs, r.detectMs);
  for (const [id, ms] of Object.entries(r.modelMs)) state.modelMs[id] = ema(state.modelMs[id], ms);
  state.faces = r.faces;
  state.last = { image, faces: r.faces, minFace };
  state.frames += 1;
  const per = state.perFrame, model = Object.values(r.modelMs).reduce((a, b) => a + b, 0);
  per.push({ total: performance.now() - tg, detect: r.detectMs, model, faces: r.faces.length }); // bench/live.py
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
    if (state.ready && state.slots.length && video.readyState >= 2 && !state.paused) {
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
  if (typeof Worker === "undefined") {
    setStatus("unsupported", "This browser has no Web Workers, which live mode needs. Use snapshot mode below.");
    return;
  }
  try {
    if (!worker) { // once: a start again after a model that failed keeps the detector
      $("status").textContent = "Loading the face detector...";
      startWorker();
      await call("init", { nets: { pnet: args.pnet, rnet: args.rnet, onet: args.onet } });
    }
    await loadModels(state.args);
    state.ready = true;
  } catch (err) {
    if (state.status === "starting") setStatus("no-wasm", `onnxruntime-web could not start: ${err.message || err}. `
      + "Use snapshot mode below.");
    return;
  }
  $("status").textContent = "Waiting for the camera (allow it when the browser asks)...";
  const cam = await startCamera();
  if (!cam) return;
  setStatus("running", RUNNING);
  loop(cam.video, cam.frameInterval);
}

const modelKey = (a, b) => `${a || ""}|${b || ""}`;
const slotKey = () => modelKey(state.slots[0] && state.slots[0].id, state.slots[1] && state.slots[1].id);
let started = false;
onRender((args) => {
  state.args = args;
  state.minFace = args.min_face || 40; // the detector's smallest face: applies from the next frame
  if (!started) { started = true; start(); return; }
  if (!state.ready && state.status === "model-error") { start(); return; } // the first model failed: another pick
  // a new model chosen on the page: load it beside the running loop, then swap (camera and page stay as they are)
  if (state.ready && modelKey(args.model_a_id, args.model_b_id) !== slotKey()) {
    state.loading = (state.loading || Promise.resolve()).then(() => {
      if (modelKey(state.args.model_a_id, state.args.model_b_id) !== slotKey()) return loadModels(state.args);
    }).then(() => report(true), () => {});
  }
});
new ResizeObserver(resize).observe(document.body);
