// Builds the Live component into build/ (committed, so the app needs no npm step): two bundled ES modules (the page, and a
// worker with onnxruntime-web's WebAssembly backend), the page, its CSS, and the one .wasm that backend loads. Run: npm ci && npm run build
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync, statSync } from "node:fs";

const out = "build";
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
await build({
  // live.js: the page (camera, drawing, the Streamlit protocol); worker.js: detection and the models (onnxruntime-web)
  entryPoints: { live: "src/main.js", worker: "src/worker.js" }, bundle: true, format: "esm", minify: true, outdir: out,
  target: ["chrome110", "firefox115", "safari16"], legalComments: "eof",
});
copyFileSync("src/index.html", `${out}/index.html`);
copyFileSync("src/live.css", `${out}/live.css`);
// The plain SIMD build only: the JSEP (WebGPU), JSPI and asyncify variants are 18-29 MB each and unused here.
copyFileSync("node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", `${out}/ort-wasm-simd-threaded.wasm`);
for (const f of ["index.html", "live.css", "live.js", "worker.js", "ort-wasm-simd-threaded.wasm"]) {
  console.log(`${out}/${f}: ${(statSync(`${out}/${f}`).size / 1024).toFixed(0)} KiB`);
}
