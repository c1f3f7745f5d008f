// Live parts of the dashboard. The pages work without this file: it only keeps them current.
// Parts come from the server as HTML it rendered (escaped there); nothing here builds markup
// from data, and log text is set with textContent.
"use strict";
(function () {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function fetchText(url) {
    const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!answer.ok) throw new Error(`${url}: ${answer.status}`);
    return answer.text();
  }

  function swap(container, html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    const fresh = doc.getElementById("live");
    if (fresh === null) {
      container.replaceChildren(...Array.from(doc.body.childNodes, (n) => document.importNode(n, true)));
      return container;
    }
    const node = document.importNode(fresh, true);
    container.replaceWith(node);
    document.dispatchEvent(new CustomEvent("orchestra:updated", { detail: node }));
    return node;
  }

  async function followPart() {
    let live = document.getElementById("live");
    while (live !== null && live.isConnected && live.dataset.liveSrc) {
      await sleep(Number(live.dataset.liveEvery || 2000));
      if (document.hidden) continue;
      try {
        live = swap(live, await fetchText(live.dataset.liveSrc));
      } catch (error) {
        await sleep(3000); // the server restarting, or the network: try again later
      }
    }
  }

  function setLog(id, text) {
    const pre = document.getElementById(id);
    if (pre === null || pre.textContent === text) return;
    const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
    pre.textContent = text;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  async function followLog() {
    for (;;) {
      await sleep(1500);
      const live = document.getElementById("live");
      if (live === null || !live.dataset.logSrc) return;
      if (document.hidden) continue;
      try {
        const log = JSON.parse(await fetchText(live.dataset.logSrc));
        setLog("stdout", log.stdout || "");
        setLog("stderr", log.stderr || "");
      } catch (error) {
        await sleep(3000);
      }
    }
  }

  window.addEventListener("DOMContentLoaded", () => {
    followPart();
    followLog();
  });
})();
