// chat-backend website widget. A site includes it with
//   <script src="https://CHAT-SERVER/widget.js" async></script>
// and gets a "Chat with us" button that opens the chat (the server's /widget/ page) in a frame. Everything is
// made with DOM calls and styled through element.style, inside a shadow root: the site's styles do not reach it
// and its policy need not allow inline style. The one global is `ChatBackendWidget` ({open, close, toggle}), and
// including the script twice adds one button.
(() => {
  if (window.ChatBackendWidget) return;
  const script = document.currentScript || document.querySelector('script[src$="/widget.js"]');
  if (!script) return;
  const origin = new URL(script.src, location.href).origin;
  const api = {};
  window.ChatBackendWidget = api;

  const make = (tag, style, attributes = {}) => {
    const node = document.createElement(tag);
    Object.assign(node.style, style);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  };
  const font = "600 15px/1.2 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  const shadow = "0 4px 16px rgba(0,0,0,.25)";
  const host = make("div", { position: "fixed", zIndex: "2147483000", right: "0", bottom: "0" }, { id: "chat-backend-widget" });
  const root = host.attachShadow({ mode: "open" });
  const button = make("button", {
    position: "fixed", right: "20px", bottom: "20px", padding: "12px 18px", border: "0", borderRadius: "999px",
    background: "#2456c9", color: "#fff", font, letterSpacing: "normal", textTransform: "none", cursor: "pointer",
    boxShadow: shadow,
  }, { type: "button", "aria-expanded": "false", "aria-controls": "panel" });
  button.textContent = "Chat with us";
  // A ring of two colours, seen on light and dark sites alike, when the button has the keyboard's focus.
  button.addEventListener("focus", () => {
    if (button.matches(":focus-visible")) button.style.boxShadow = "0 0 0 3px #fff, 0 0 0 6px #1b1f24";
  });
  button.addEventListener("blur", () => { button.style.boxShadow = shadow; });
  const panel = make("div", {
    position: "fixed", right: "12px", bottom: "76px", width: "min(380px, calc(100vw - 24px))",
    height: "min(600px, calc(100vh - 100px))", borderRadius: "12px", overflow: "hidden", background: "#fff",
    boxShadow: "0 8px 32px rgba(0,0,0,.3)", display: "none",
  }, { id: "panel", role: "dialog", "aria-label": "Chat" });
  root.append(panel, button);
  let frame = null;
  let loaded = false;
  let started = false; // the frame's page said it runs (a site the server does not allow gets an error page)

  // The frame's page says when to close (Escape in it) and hears whether it is on screen (read markers).
  const tell = (shown) => loaded && frame.contentWindow.postMessage({ chatBackendWidget: shown ? "shown" : "hidden" }, origin);

  api.open = () => {
    if (!frame) {
      frame = make("iframe", { width: "100%", height: "100%", border: "0", display: "block" }, { src: origin + "/widget/", title: "Chat" });
      panel.append(frame);
      // Its page's scripts have run by its load event: a page that did not say it started is an error page.
      frame.addEventListener("load", () => { loaded = true; setTimeout(notStarted, 2000); });
    }
    panel.style.display = "block";
    button.setAttribute("aria-expanded", "true");
    tell(true);
    frame.focus();
  };
  const notStarted = () => {
    if (started) return;
    console.warn(`chat-backend widget: the chat of ${origin} did not start in its frame; `
      + `is ${location.origin} in that server's WIDGET_ORIGINS?`);
    const note = make("p", { margin: "0", padding: "24px", font, color: "#1b1f24" }, { role: "status" });
    note.textContent = "Chat is not available on this site.";
    panel.replaceChildren(note);
  };
  api.close = () => {
    if (panel.style.display === "none") return;
    panel.style.display = "none";
    button.setAttribute("aria-expanded", "false");
    tell(false);
    button.focus();
  };
  api.toggle = () => (panel.style.display === "none" ? api.open() : api.close());

  button.addEventListener("click", api.toggle);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") api.close();
  });
  addEventListener("message", (event) => {
    if (!frame || event.source !== frame.contentWindow || event.origin !== origin || !event.data) return;
    if (event.data.chatBackendWidget === "close") api.close();
    if (event.data.chatBackendWidget === "started") started = true;
  });

  if (document.body) document.body.append(host);
  else addEventListener("DOMContentLoaded", () => document.body.append(host));
})();
