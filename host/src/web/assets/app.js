// jobhost dashboard: refreshes <main id="main"> when the server says jobs changed (server-sent
// events), only while the tab is visible, and ticks running jobs' elapsed times each second.
(function () {
  "use strict";

  var main = document.getElementById("main");
  var status = document.getElementById("live-status");
  var eventsUrl = document.body.getAttribute("data-events");
  var live = main && main.getAttribute("data-live") === "true" && eventsUrl;
  var source = null;
  var busy = false;
  var again = false;

  // The same format as the server's: 12 s, 3m 07s, 2h 05m.
  function clock(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-started-at]").forEach(function (el) {
      var start = Number(el.getAttribute("data-started-at"));
      if (start > 0) el.textContent = clock(now - start);
    });
  }

  function scrollLogsToEnd() {
    document.querySelectorAll("pre.log").forEach(function (pre) {
      pre.scrollTop = pre.scrollHeight;
    });
  }

  // Someone typing in a form inside <main> must not lose it to a refresh.
  function editing() {
    var el = document.activeElement;
    return el && main.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  // Puts the <main> of a fetched page in place of this page's; a redirect to the login page
  // (the session ended) is followed instead.
  function swap(response) {
    if (response.redirected && /\/login$/.test(new URL(response.url).pathname)) {
      location.assign(response.url);
      return null;
    }
    return response.text().then(function (html) {
      var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
      if (!fresh) return;
      var scrolls = Array.prototype.map.call(main.querySelectorAll("pre"), function (pre) {
        return pre.scrollTop;
      });
      main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
      main.querySelectorAll("pre").forEach(function (pre, i) {
        if (i < scrolls.length) pre.scrollTop = scrolls[i];
      });
      scrollLogsToEnd();
      tick();
    });
  }

  function refresh() {
    if (busy || editing()) { again = true; return; }
    busy = true;
    again = false;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(swap)
      .catch(function () { /* the next change or visibility change tries again */ })
      .then(function () {
        busy = false;
        if (again) refresh();
      });
  }

  // Cancel and retry act in place: the form is posted in the background and its answer (the
  // job page it redirects to, or what went wrong) replaces <main>, so the page keeps its
  // place and goes on updating. Without JavaScript the forms post and redirect as usual.
  function act(event) {
    var form = event.target;
    if (!/^(cancel|retry)-form$/.test(form.id)) return;
    event.preventDefault();
    var button = form.querySelector("button");
    if (button) button.disabled = true;
    fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      body: new URLSearchParams(new FormData(form))
    })
      .then(swap)
      .catch(function () { if (button) button.disabled = false; });
  }

  function setStatus(on) {
    if (!status) return;
    status.textContent = on ? "live" : (live ? "paused" : "static");
    status.classList.toggle("on", on);
  }

  function connect() {
    if (!live || source) return;
    source = new EventSource(eventsUrl);
    source.addEventListener("change", refresh);
    // Whatever changed between the rendering of this page and the opening of the stream (or
    // while it was reconnecting) has not been told: refresh once now.
    source.addEventListener("open", function () { setStatus(true); refresh(); });
    source.addEventListener("error", function () {
      setStatus(false);
      if (source && source.readyState === EventSource.CLOSED) {
        // Refused (the session ended, or the server went away and came back): start over.
        source = null;
        setTimeout(function () { location.reload(); }, 5000);
      }
    });
  }

  function disconnect() {
    if (source) { source.close(); source = null; }
    setStatus(false);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      disconnect();
    } else if (live) {
      connect();  // and refreshes once the stream is open
    }
  });

  if (main) {
    main.addEventListener("submit", act);
    main.addEventListener("focusout", function () {
      if (again) setTimeout(refresh, 0);
    });
  }

  setInterval(function () { if (!document.hidden) tick(); }, 1000);
  scrollLogsToEnd();
  setStatus(false);
  if (!document.hidden) connect();
})();
