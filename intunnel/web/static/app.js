// InTunnel dashboard enhancements.  Every page works without this file; it adds
// copy buttons, live tunnel status (a poll of /api/tunnels) and relative times.
// Loaded as an external script so the CSP can forbid inline scripts.
(function () {
  "use strict";

  // ---- relative times: mirrors intunnel/web/render.py:ago() ----
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function ago(iso) {
    if (!iso) return "Never";
    var then = new Date(iso);
    var s = Math.max(0, Math.floor((Date.now() - then.getTime()) / 1000));
    if (s < 60) return "just now";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    var d = Math.floor(s / 86400);
    if (d < 30) return d === 1 ? "1 day ago" : d + " days ago";
    return then.getUTCDate() + " " + MONTHS[then.getUTCMonth()] + " " + then.getUTCFullYear();
  }

  function absolute(iso) {
    if (!iso) return "";
    return iso.replace("T", " ").replace(/:\d\dZ$/, " UTC");
  }

  function refreshTimes() {
    document.querySelectorAll("time[data-relative]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      el.textContent = ago(iso);
    });
  }

  // ---- copy buttons: <button data-copy="element-id" hidden> ----
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      area.remove();
      if (ok) { resolve(); } else { reject(new Error("copy refused")); }
    });
  }

  function setupCopyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      var label = button.textContent;
      button.hidden = false;
      button.addEventListener("click", function () {
        copyText(source.textContent.trim()).then(function () {
          button.textContent = "Copied";
          button.classList.add("is-copied");
        }, function () {
          button.textContent = "Select and press Ctrl+C";
        });
        window.setTimeout(function () {
          button.textContent = label;
          button.classList.remove("is-copied");
        }, 1800);
      });
    });
  }

  // ---- live status ----
  function announce(text) {
    var region = document.getElementById("live-announcer");
    if (region) region.textContent = text;
  }

  function applyTunnel(t) {
    document.querySelectorAll('[data-tunnel-status="' + t.id + '"]').forEach(function (pill) {
      var previous = pill.getAttribute("data-status");
      var active = t.status === "active";
      pill.setAttribute("data-status", t.status);
      pill.classList.toggle("is-active", active);
      var label = pill.querySelector(".pill-text");
      if (label) label.textContent = active ? "Active" : "Inactive";
      if (previous && previous !== t.status) {
        announce((t.name || t.subdomain) + " is now " + (active ? "active" : "inactive"));
      }
    });
    if (t.status !== "active") {  // the session that narrowed the policy is gone, and its rules with it
      document.querySelectorAll('[data-session-access="' + t.id + '"]').forEach(function (el) { el.hidden = true; });
    }
    document.querySelectorAll('[data-tunnel-last="' + t.id + '"]').forEach(function (el) {
      if (t.last_connected) {
        el.setAttribute("datetime", t.last_connected);
        el.setAttribute("title", absolute(t.last_connected));
      }
    });
  }

  function setupLiveStatus() {
    var root = document.querySelector("[data-live-status]");
    if (!root || !window.fetch) return;
    var seconds = parseFloat(root.getAttribute("data-poll-seconds"));
    var delay = (seconds > 0 ? seconds : 3) * 1000;
    var stopped = false;

    function schedule() {
      if (!stopped) window.setTimeout(tick, delay);
    }

    function tick() {
      if (document.hidden) { schedule(); return; }
      fetch("/api/tunnels", { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          // Logged out or session expired: stop asking; the next click shows the login page.
          if (response.status === 401) { stopped = true; return null; }
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (data && data.tunnels) {
            data.tunnels.forEach(applyTunnel);
            var counter = document.getElementById("active-count");
            if (counter) {
              counter.textContent = String(data.tunnels.filter(function (t) { return t.status === "active"; }).length);
            }
            root.setAttribute("data-last-poll", new Date().toISOString());
          }
          refreshTimes();
        })
        .catch(function () { /* network blip: try again next time */ })
        .then(schedule);
    }

    schedule();
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) refreshTimes();
    });
  }

  // ---- recent requests (the tunnel page's traffic view): new entries polled, newest on top ----
  function trafficRow(e) {
    var row = document.createElement("tr");
    row.setAttribute("data-entry", String(e.id));
    [e.time.replace("T", " ").replace(/\.\d+Z$/, " UTC"), e.method, e.path, String(e.status), e.duration_ms + " ms",
     e.request_bytes + " / " + e.response_bytes, e.visitor].forEach(function (text, i) {
      var cell = document.createElement("td");
      cell.textContent = text;   // text, never markup: paths are the visitors'
      if (i === 2 || i === 6) cell.className = "mono";
      row.appendChild(cell);
    });
    return row;
  }

  function setupTraffic() {
    var table = document.querySelector("[data-traffic]");
    if (!table || !window.fetch) return;
    var body = table.querySelector("tbody");
    var url = "/api/tunnels/" + table.getAttribute("data-traffic") + "/traffic?after=";
    var seconds = parseFloat(table.getAttribute("data-poll-seconds"));
    var delay = (seconds > 0 ? seconds : 1) * 1000;
    var max = parseInt(table.getAttribute("data-max-rows"), 10) || 200;
    var after = 0;
    var stopped = false;

    function tick() {
      if (document.hidden) { window.setTimeout(tick, delay); return; }
      fetch(url + after, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (response.status === 401 || response.status === 404) { stopped = true; return null; }
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (!data || !data.entries || !data.entries.length) return;
          for (var i = data.entries.length - 1; i >= 0; i--) {   // oldest first, each on top
            body.insertBefore(trafficRow(data.entries[i]), body.firstChild);
            after = Math.max(after, data.entries[i].id);
          }
          while (body.rows.length > max) body.deleteRow(body.rows.length - 1);
          var empty = document.getElementById("traffic-empty");
          if (empty) empty.hidden = true;
        })
        .catch(function () { /* network blip: try again next time */ })
        .then(function () { if (!stopped) window.setTimeout(tick, delay); });
    }

    tick();
  }

  // ---- custom domains (the tunnel page): their status (pending-dns, issuing, active, failed: ...) live ----
  function setupDomains() {
    var table = document.querySelector("[data-domains]");
    if (!table || !window.fetch) return;
    var url = "/api/tunnels/" + table.getAttribute("data-domains") + "/domains";
    var seconds = parseFloat(table.getAttribute("data-poll-seconds"));
    var delay = Math.max(seconds > 0 ? seconds : 1, 2) * 1000;

    function tick() {
      if (document.hidden) { window.setTimeout(tick, delay); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (!data || !data.domains) return;
          data.domains.forEach(function (d) {
            var rows = table.querySelectorAll("tr[data-hostname]");
            for (var i = 0; i < rows.length; i++) {
              if (rows[i].getAttribute("data-hostname") !== d.hostname) continue;
              var cell = rows[i].querySelector("[data-domain-status]");
              if (cell && cell.textContent !== d.status) cell.textContent = d.status;   // text, never markup
            }
          });
        })
        .catch(function () { /* network blip: try again next time */ })
        .then(function () { window.setTimeout(tick, delay); });
    }

    window.setTimeout(tick, delay);
  }

  function start() {
    setupCopyButtons();
    setupLiveStatus();
    setupTraffic();
    setupDomains();
    refreshTimes();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
