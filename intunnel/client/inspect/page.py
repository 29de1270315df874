"""The inspector's page: one self-contained HTML document (vanilla JS, no CDN, nothing fetched
but the API).  Captured content is only ever set as text (``textContent``) or as an image's
data: URL, never as HTML."""

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>intunnel inspector</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{display:flex;gap:.6em;align-items:center;padding:.6em 1em;background:#1d2330;color:#fff;flex-wrap:wrap}
header h1{font-size:1em;margin:0 1em 0 0}
header input,header select{font:inherit;padding:.2em .4em}
button{font:inherit;cursor:pointer;padding:.25em .7em;border:1px solid #aab;border-radius:4px;background:#fff}
main{display:grid;grid-template-columns:minmax(320px,40%) 1fr;height:calc(100vh - 3em)}
#list{overflow:auto;border-right:1px solid #ccd;background:#fff;margin:0;padding:0;list-style:none}
#list li{padding:.35em .8em;border-bottom:1px solid #eef;cursor:pointer;display:grid;
 grid-template-columns:4.5em 1fr 3.5em 5em;gap:.5em;font-family:ui-monospace,monospace;font-size:13px}
#list li:hover{background:#eef3ff}#list li.sel{background:#dde8ff}
.s2{color:#17803d}.s3{color:#1c5fb8}.s4{color:#b86e00}.s5{color:#c02828}
.tag{font-size:11px;background:#ffe7a8;border-radius:3px;padding:0 .3em;margin-left:.4em}
#detail{overflow:auto;padding:1em}
pre{background:#fff;border:1px solid #dde;padding:.6em;overflow:auto;white-space:pre-wrap;word-break:break-all;
 font:12px ui-monospace,monospace;max-height:40vh}
h2{font-size:1.05em}h3{font-size:.95em;margin:1em 0 .3em}
table.form td{border-bottom:1px solid #eee;padding:.1em .6em;font-family:ui-monospace,monospace}
textarea{width:100%;font:12px ui-monospace,monospace;box-sizing:border-box}
#curl-out:empty{display:none}.muted{color:#667}.empty{padding:2em;color:#667}
</style></head>
<body>
<header><h1>intunnel inspector</h1>
<input id="f-path" placeholder="path contains" size="14" aria-label="filter by path">
<select id="f-method" aria-label="filter by method"><option value="">any method</option>
<option>GET</option><option>POST</option><option>PUT</option><option>PATCH</option><option>DELETE</option>
<option>HEAD</option><option>OPTIONS</option></select>
<input id="f-status" placeholder="status (404, 5xx)" size="12" aria-label="filter by status">
<button id="clear">Clear</button><span id="count" class="muted"></span></header>
<main><ul id="list" aria-label="requests"></ul><section id="detail"><p class="empty">Requests through the
tunnel appear here as they arrive. Pick one to see it.</p></section></main>
<script>
"use strict";
const API = "/api/requests/http";
let selected = null, version = -1, publicUrl = null, shownDetail = null;
const $ = (id) => document.getElementById(id);
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const k of kids) e.append(k);
  return e;
}
function filters() {
  const q = new URLSearchParams({limit: "500"});
  if ($("f-path").value) q.set("path", $("f-path").value);
  if ($("f-method").value) q.set("method", $("f-method").value);
  if ($("f-status").value) q.set("status", $("f-status").value);
  return q.toString();
}
async function api(path, opts) {
  const r = await fetch(path, Object.assign({credentials: "same-origin"}, opts || {}));
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.message) || r.status);
  return data;
}
async function refresh(force) {
  let data;
  try { data = await api(API + "?" + filters()); } catch (e) { $("count").textContent = "disconnected"; return; }
  publicUrl = data.public_url;
  if (!force && data.version === version) return;
  version = data.version;
  $("count").textContent = data.requests.length + " shown";
  const list = $("list");
  list.replaceChildren(...data.requests.map(row));
  if (selected) show(selected, true);
}
function row(x) {
  const st = x.response ? x.response.status_code : (x.state === "open" ? "…" : "—");
  const li = el("li", {className: x.id === selected ? "sel" : ""},
    el("span", {textContent: x.request.method}),
    el("span", {textContent: x.request.uri, title: x.request.uri}),
    el("span", {className: "s" + String(st)[0], textContent: st}),
    el("span", {className: "muted", textContent: x.duration_ms == null ? "" : x.duration_ms.toFixed(1) + " ms"}));
  if (x.replay) li.children[1].append(el("span", {className: "tag", textContent: "replay"}));
  if (x.upgrade) li.children[1].append(el("span", {className: "tag", textContent: "upgraded"}));
  li.dataset.id = x.id;
  li.onclick = () => { selected = x.id; for (const o of $("list").children) o.className = o.dataset.id === x.id ? "sel" : ""; show(x.id); };
  return li;
}
function bytesOf(b64) { const s = atob(b64 || ""); const a = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }
function hex(a) {
  const lines = [];
  for (let i = 0; i < a.length && i < 4096; i += 16) {
    const part = Array.from(a.slice(i, i + 16));
    lines.push(i.toString(16).padStart(8, "0") + "  " + part.map(b => b.toString(16).padStart(2, "0")).join(" ").padEnd(48) +
      "  " + part.map(b => b >= 32 && b < 127 ? String.fromCharCode(b) : ".").join(""));
  }
  return lines.join("\n");
}
function renderBody(body) {
  const box = el("div");
  const a = bytesOf(body.data);
  const note = body.size + " bytes" + (body.truncated ? ", the first " + body.kept + " kept" : "") +
    (body.content_type ? " · " + body.content_type : "");
  box.append(el("div", {className: "muted", textContent: note}));
  if (!a.length) return box;
  const ct = (body.content_type || "").toLowerCase();
  let text = null;
  try { text = new TextDecoder("utf-8", {fatal: true}).decode(a); } catch (e) { text = null; }
  let parts = null;
  if (ct.startsWith("multipart/form-data")) parts = multipart(a, body.content_type);
  if (parts) {
    box.append(parts);
  } else if (ct.startsWith("image/") && !body.truncated && /^image\/(png|jpeg|gif|webp|bmp|x-icon)/.test(ct)) {
    box.append(el("img", {src: "data:" + ct.split(";")[0] + ";base64," + body.data, alt: "image body", style: "max-width:100%"}));
  } else if (text !== null && ct.includes("json")) {
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) {}
    box.append(el("pre", {className: "json", textContent: shown}));
  } else if (text !== null && ct.includes("x-www-form-urlencoded")) {
    const t = el("table", {className: "form"});
    for (const [k, v] of new URLSearchParams(text)) t.append(el("tr", {}, el("td", {textContent: k}), el("td", {textContent: v})));
    box.append(t);
  } else if (text !== null) {
    box.append(el("pre", {textContent: text}));
  } else {
    box.append(el("pre", {className: "hex", textContent: hex(a)}));
  }
  return box;
}
function multipart(a, ct) {
  // multipart/form-data: one row per part, its name and its text (a file: its name, type and size)
  const m = /boundary="?([^";]+)"?/i.exec(ct);
  if (!m) return null;
  const s = Array.from(a, (b) => String.fromCharCode(b)).join("");
  const t = el("table", {className: "form multipart"});
  for (const part of s.split("--" + m[1]).slice(1)) {
    if (part.startsWith("--")) break;
    const cut = part.indexOf("\r\n\r\n");
    if (cut < 0) continue;
    const head = part.slice(0, cut), content = part.slice(cut + 4).replace(/\r\n$/, "");
    const name = (/name="([^"]*)"/i.exec(head) || [null, ""])[1];
    const file = /filename="([^"]*)"/i.exec(head);
    const type = (/content-type:\s*([^\r\n]+)/i.exec(head) || [null, ""])[1];
    let value;
    if (file) {
      value = file[1] + " (" + (type || "file") + ", " + content.length + " bytes)";
    } else {
      try { value = new TextDecoder("utf-8", {fatal: true}).decode(Uint8Array.from(content, (c) => c.charCodeAt(0))); }
      catch (e) { value = content.length + " bytes"; }
    }
    t.append(el("tr", {}, el("td", {textContent: name}), el("td", {textContent: value})));
  }
  return t.children.length ? t : null;
}
function shq(s) { return "'" + String(s).replace(/'/g, "'\\''") + "'"; }
function curl(x) {
  const base = x.public_url || publicUrl || ("http://" + (x.request.host || "localhost"));
  const parts = ["curl", "-X", x.request.method, shq(base.replace(/\/$/, "") + x.request.uri)];
  const skip = new Set(["host", "content-length", "connection", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]);
  for (const [k, v] of x.request.headers) if (!skip.has(k.toLowerCase())) parts.push("-H", shq(k + ": " + v));
  const a = bytesOf(x.request.body.data);
  if (a.length) parts.push("--data-binary", shq(new TextDecoder().decode(a)));
  return parts.join(" ");
}
async function show(id, quiet) {
  let x;
  try { x = await api(API + "/" + encodeURIComponent(id)); } catch (e) { if (!quiet) $("detail").replaceChildren(el("p", {className: "empty", textContent: String(e.message)})); return; }
  const key = JSON.stringify([x.id, x.state, x.duration_ms, x.upgrade, x.response && x.response.body.kept]);
  if (quiet && key === shownDetail) return;
  shownDetail = key;
  const d = $("detail");
  const title = el("h2", {textContent: x.request.method + " " + x.request.uri + (x.response ? " → " + x.response.status_code : "")});
  const meta = el("p", {className: "muted", textContent: x.start + " · " + (x.duration_ms == null ? x.state : x.duration_ms.toFixed(1) + " ms") +
    (x.remote_addr ? " · from " + x.remote_addr : "") + (x.replay ? " · replay of " + x.replay_of : "")});
  const buttons = el("p", {}, el("button", {id: "replay", textContent: "Replay", onclick: () => doReplay({id: x.id})}), " ",
    el("button", {id: "edit", textContent: "Edit and replay", onclick: () => editor(x)}), " ",
    el("button", {id: "curl", textContent: "Copy as curl", onclick: () => { const c = curl(x); $("curl-out").textContent = c; if (navigator.clipboard) navigator.clipboard.writeText(c).catch(() => {}); }}));
  const parts = [title, meta, buttons, el("pre", {id: "curl-out"}), el("div", {id: "edit-box"}),
    el("h3", {textContent: "Request"}), el("pre", {className: "head", textContent: x.request.head}), renderBody(x.request.body)];
  if (x.upgrade) parts.push(el("h3", {textContent: "Upgrade"}), el("p", {textContent: x.upgrade.protocol + ": " + x.upgrade.bytes_in +
    " bytes in, " + x.upgrade.bytes_out + " bytes out" + (x.upgrade.open ? " (open)" : "")}));
  if (x.response) parts.push(el("h3", {textContent: "Response"}), el("pre", {className: "head", textContent: x.response.head}), renderBody(x.response.body));
  d.replaceChildren(...parts);
}
function editor(x) {
  const box = $("edit-box");
  const method = el("input", {value: x.request.method, size: 8, id: "edit-method"});
  const path = el("input", {value: x.request.uri, size: 50, id: "edit-path"});
  const skip = new Set(["content-length", "transfer-encoding", "connection"]);
  const headers = el("textarea", {rows: 6, id: "edit-headers", value: x.request.headers.filter(([k]) => !skip.has(k.toLowerCase())).map(([k, v]) => k + ": " + v).join("\n")});
  const body = el("textarea", {rows: 8, id: "edit-body", value: new TextDecoder().decode(bytesOf(x.request.body.data))});
  const send = el("button", {id: "edit-send", textContent: "Send", onclick: () => doReplay({id: x.id, method: method.value, path: path.value,
    headers: headers.value.split("\n").filter(l => l.includes(":")).map(l => [l.slice(0, l.indexOf(":")).trim(), l.slice(l.indexOf(":") + 1).trim()]),
    body: body.value})});
  box.replaceChildren(el("h3", {textContent: "Edit and replay"}), method, " ", path, headers, body, send);
}
async function doReplay(req) {
  try {
    const x = await api(API, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(req)});
    selected = x.id; await refresh(true); show(x.id);
  } catch (e) { alert("replay failed: " + e.message); }
}
$("clear").onclick = async () => { await api(API, {method: "DELETE"}); selected = null; $("detail").replaceChildren(); refresh(true); };
for (const id of ["f-path", "f-method", "f-status"]) $(id).oninput = () => refresh(true);
refresh(true);
setInterval(() => refresh(false), 1000);
</script></body></html>
"""
