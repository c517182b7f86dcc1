// The Streamlit component protocol (version 1) in a few lines: the parent page posts "streamlit:render" with the
// arguments; the component posts "componentReady", "setFrameHeight" and "setComponentValue". Written out here instead
// of depending on streamlit-component-lib, which would pull React and Apache Arrow into the bundle for nothing.

const send = (type, data = {}) => window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");

export function onRender(callback) {
  window.addEventListener("message", (event) => {
    if (event.data && event.data.type === "streamlit:render") callback(event.data.args || {}, event.data);
  });
  send("streamlit:componentReady", { apiVersion: 1 });
}

export function setFrameHeight(height) {
  send("streamlit:setFrameHeight", { height });
}

// Only small JSON goes back (status and a few numbers): no frame, crop or image ever leaves the browser.
export function setComponentValue(value) {
  send("streamlit:setComponentValue", { value, dataType: "json" });
}
