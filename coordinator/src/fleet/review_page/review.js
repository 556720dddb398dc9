// Principia's review page: a little vanilla JavaScript over the JSON review API.
// Every value from the API is put into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const KEY = "principia-api-key";
  const PAGE = 50;
  const TREE_PAGE = 100;
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const status = $("status");

  function say(message, error) {
    status.textContent = message || "";
    status.classList.toggle("error", !!error);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // ----- API key and requests -----

  function key() {
    return sessionStorage.getItem(KEY) || "";
  }

  function askForKey(message) {
    $("key-form").hidden = false;
    $("key-input").focus();
    say(message || "This coordinator needs an API key.", true);
  }

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (key()) opts.headers["Authorization"] = "Bearer " + key();
    if (opts.json !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.json);
      delete opts.json;
    }
    const response = await fetch(path, opts);
    if (response.status === 401) {
      askForKey(key() ? "The API key was refused; enter another." : undefined);
      throw new Error("unauthorized");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        const error = await response.json();
        if (error && error.error && error.error.message) message = error.error.message;
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return opts.raw ? response : response.json();
  }

  function setUpKeyForm(onReady) {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("key-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      $("key-input").value = "";
      $("key-form").hidden = true;
      say("");
      onReady();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      askForKey("Enter an API key.");
    });
  }

  function fail(error) {
    if (error && error.message === "unauthorized") return;
    say(String(error && error.message ? error.message : error), true);
  }

  // ----- the list of jobs -----

  async function loadJobs() {
    const tbody = $("jobs");
    try {
      const list = await api("/v1/flow/alignment");
      tbody.replaceChildren();
      for (const job of list.data) {
        tbody.append(el("tr", {},
          el("td", {}, el("a", { href: "/review/" + encodeURIComponent(job.id), text: job.id })),
          el("td", { text: job.status }),
          el("td", { text: job.created_at }),
          el("td", { text: String(job.principia ? job.principia.accepted : "") }),
          el("td", { text: job.status_message || "" })));
      }
      if (!list.data.length) tbody.append(el("tr", {}, el("td", { colspan: "5", text: "No jobs yet." })));
      say("");
    } catch (error) {
      fail(error);
    }
  }

  // ----- the review of one job -----

  const job = body.dataset.job;
  const base = "/v1/flow/alignment/" + encodeURIComponent(job) + "/review";
  const state = {
    section: null, // node id
    sectionData: null,
    items: [],
    selected: -1,
    offset: 0,
    total: 0,
    filter: "",
    treeVersion: 0,
    generatedVersion: 0,
    jobStatus: "",
  };

  function counts(c) {
    const badges = el("span", { class: "badges" });
    badges.append(el("span", { class: "badge", title: "items", text: String(c.items) }));
    if (c.approved) badges.append(el("span", { class: "badge ok", title: "approved", text: "✓" + c.approved }));
    if (c.rejected) badges.append(el("span", { class: "badge bad", title: "rejected", text: "✗" + c.rejected }));
    return badges;
  }

  function nodeRow(node) {
    const gap = node.has_text && node.own.items === 0;
    const li = el("li", { "data-node": node.node_id });
    const row = el("div", { class: "node" + (gap ? " gap" : "") });
    const toggle = el("button", {
      type: "button",
      class: "toggle" + (node.children ? "" : " leaf"),
      "aria-label": (node.children ? "Expand " : "") + node.label,
      "aria-expanded": node.children ? "false" : undefined,
      tabindex: node.children ? undefined : "-1",
      text: node.children ? "▸" : "·",
    });
    const label = el("button", {
      type: "button",
      class: "node-label",
      "data-node": node.node_id,
      title: node.citation || node.label,
      text: node.label,
    });
    row.append(toggle, label, counts(node.subtree));
    row.dataset.node = node.node_id;
    if (gap) row.append(el("span", { class: "badge gap", title: "this section has no items", text: "no items" }));
    else if (node.sections_without_items) row.append(el("span", { class: "badge gap", title: "sections without items below", text: node.sections_without_items + " empty" }));
    if (node.text_changed) row.append(el("span", { class: "badge changed", title: "text edited since generation", text: "edited" }));
    li.append(row);
    const children = el("ul", { hidden: true, "aria-label": "Inside " + node.label });
    li.append(children);
    toggle.addEventListener("click", async () => {
      if (!node.children) return;
      const open = toggle.getAttribute("aria-expanded") === "true";
      if (open) {
        children.hidden = true;
        toggle.setAttribute("aria-expanded", "false");
        toggle.textContent = "▸";
      } else {
        if (!children.dataset.loaded) await loadChildren(node.node_id, children, 0);
        children.hidden = false;
        toggle.setAttribute("aria-expanded", "true");
        toggle.textContent = "▾";
      }
    });
    label.addEventListener("click", () => openSection(node.node_id, 0));
    return li;
  }

  async function loadChildren(parent, ul, offset) {
    const query = new URLSearchParams({ limit: String(TREE_PAGE), offset: String(offset) });
    if (parent) query.set("parent", parent);
    const page = await api(base + "/tree?" + query);
    state.treeVersion = page.tree_version;
    state.generatedVersion = page.generated_version;
    state.jobStatus = page.status;
    if (offset === 0) ul.replaceChildren();
    const old = ul.querySelector(":scope > .more-li");
    if (old) old.remove();
    for (const node of page.nodes) ul.append(nodeRow(node));
    const shown = offset + page.nodes.length;
    if (shown < page.total) {
      const more = el("button", { type: "button", class: "more", text: "Show more (" + (page.total - shown) + " left)" });
      more.addEventListener("click", () => loadChildren(parent, ul, shown).catch(fail));
      ul.append(el("li", { class: "more-li" }, more));
    }
    ul.dataset.loaded = "1";
    return page;
  }

  function summarize(root) {
    const c = root.subtree;
    $("job-summary").textContent =
      c.items + " items · " + c.approved + " approved · " + c.rejected + " rejected · " +
      c.pending + " pending · " + c.edited + " edited · " + root.sections_without_items + " of " +
      root.sections + " sections without items · tree v" + state.treeVersion +
      (state.treeVersion !== state.generatedVersion ? " (generated v" + state.generatedVersion + ")" : "") +
      " · job " + state.jobStatus;
    $("regenerate").disabled = !(state.treeVersion > state.generatedVersion &&
      ["completed", "failed", "cancelled"].includes(state.jobStatus));
  }

  async function loadTree() {
    const page = await loadChildren(null, $("tree"), 0);
    const root = page.nodes[0];
    if (!root) return;
    summarize(root);
    // Open the root's level at once.
    const toggle = $("tree").querySelector("li .toggle");
    if (toggle && root.children) toggle.click();
  }

  function markLabel(nodeId) {
    for (const b of document.querySelectorAll(".node-label.current")) b.classList.remove("current");
    for (const b of document.querySelectorAll(".node-label")) {
      if (b.dataset.node === nodeId) b.classList.add("current");
    }
  }

  async function openSection(nodeId, offset) {
    try {
      const query = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
      if (state.filter) query.set("status", state.filter);
      const data = await api(base + "/sections/" + encodeURIComponent(nodeId) + "?" + query);
      state.section = nodeId;
      state.sectionData = data;
      state.items = data.items;
      state.offset = data.offset;
      state.total = data.total;
      state.selected = -1;
      markLabel(nodeId);
      $("section-heading").textContent = data.node.label;
      // The citation, unless it is only the heading path again.
      const cite = data.node.citation && !data.node.citation.includes(" > ") ? " — " + data.node.citation : "";
      $("section-path").textContent = data.path.join(" › ") + cite;
      $("edit-text").disabled = false;
      $("text-form").hidden = true;
      renderText(null);
      renderItems();
      say("");
      if (state.items.length) select(0, false);
    } catch (error) {
      fail(error);
    }
  }

  // The section's text, with the selected item's evidence in <mark>. Offsets are code points
  // (the API converts the stored byte offsets), so the text is split with Array.from.
  function renderText(item) {
    const box = $("section-text");
    const text = state.sectionData ? state.sectionData.text : "";
    box.replaceChildren();
    if (!text) {
      box.append(el("em", { text: "This node has no text of its own." }));
      return null;
    }
    const chars = Array.from(text);
    const spans = [];
    if (item) {
      for (const e of item.evidence) {
        if (e.char_start !== null && e.char_start !== undefined && e.char_end > e.char_start) {
          spans.push([e.char_start, e.char_end]);
        }
      }
    }
    spans.sort((a, b) => a[0] - b[0]);
    let at = 0;
    let first = null;
    for (const [start, end] of spans) {
      if (start < at) continue; // overlapping quotes: keep the first
      if (start > at) box.append(chars.slice(at, start).join(""));
      const mark = el("mark", { text: chars.slice(start, end).join("") });
      box.append(mark);
      if (!first) first = mark;
      at = end;
    }
    if (at < chars.length) box.append(chars.slice(at).join(""));
    if (first) first.scrollIntoView({ block: "nearest" });
    return first;
  }

  function renderItems() {
    const list = $("items");
    list.replaceChildren();
    state.items.forEach((item, index) => list.append(itemCard(item, index)));
    if (!state.items.length) {
      list.append(el("li", { class: "empty", text: state.total ? "No items on this page." : "No items in this section." }));
    }
    const end = state.offset + state.items.length;
    $("items-count").textContent = "(" + state.total + ")";
    $("page-info").textContent = state.total ? (state.offset + 1) + "–" + end + " of " + state.total : "";
    $("prev-page").disabled = state.offset === 0;
    $("next-page").disabled = end >= state.total;
  }

  function itemCard(item, index) {
    const li = el("li", {
      class: "item " + item.status + (index === state.selected ? " selected" : ""),
      tabindex: "0",
      "data-record": item.record_id,
      "aria-label": "Item " + (state.offset + index + 1) + ", " + item.status + ": " + item.question,
    });
    li.append(
      el("p", { class: "q", text: item.question }),
      el("p", { class: "a", text: item.answer }));
    for (const e of item.evidence) {
      if (e.citation) li.append(el("p", { class: "lookup", text: "Also quotes " + e.citation + ": \u201c" + e.quote + "\u201d" }));
    }
    const meta = el("div", { class: "meta" },
      el("span", { class: "badge " + (item.status === "approved" ? "ok" : item.status === "rejected" ? "bad" : ""), text: item.status }),
      el("span", { text: item.question_type }));
    if (item.human_edited) meta.append(el("span", { class: "badge changed", text: "human-edited" }));
    if (item.stale) meta.append(el("span", { class: "badge gap", text: "section text changed" }));
    if (item.reason) meta.append(el("span", { text: "reason: " + item.reason }));
    const approve = el("button", { type: "button", class: "approve", text: "Approve" });
    const reject = el("button", { type: "button", class: "reject", text: "Reject…" });
    const edit = el("button", { type: "button", class: "edit", text: "Edit…" });
    approve.addEventListener("click", (e) => { e.stopPropagation(); select(index, false); decide({ status: "approved" }); });
    reject.addEventListener("click", (e) => { e.stopPropagation(); select(index, false); openReject(); });
    edit.addEventListener("click", (e) => { e.stopPropagation(); select(index, false); openEdit(); });
    meta.append(approve, reject, edit);
    li.append(meta);
    li.addEventListener("click", () => select(index, false));
    li.addEventListener("focus", () => { if (state.selected !== index) select(index, false); });
    return li;
  }

  function cards() {
    return Array.from($("items").querySelectorAll(".item"));
  }

  function select(index, focus) {
    if (index < 0 || index >= state.items.length) return;
    state.selected = index;
    cards().forEach((card, i) => card.classList.toggle("selected", i === index));
    renderText(state.items[index]);
    if (focus) cards()[index].focus();
  }

  function current() {
    return state.selected >= 0 ? state.items[state.selected] : null;
  }

  async function decide(update) {
    const item = current();
    if (!item) return;
    const index = state.selected;
    try {
      const updated = await api(base + "/items/" + encodeURIComponent(item.record_id), { method: "PATCH", json: update });
      state.items[index] = updated;
      const card = itemCard(updated, index);
      cards()[index].replaceWith(card);
      select(index, true);
      say("Saved: " + updated.status + (updated.human_edited ? ", human-edited" : "") + ".");
      refreshCounts();
    } catch (error) {
      fail(error);
    }
  }

  // Fresh counts for the summary and for every tree row on the page (one request per open level).
  async function refreshCounts() {
    try {
      const page = await api(base + "/tree?limit=1");
      state.treeVersion = page.tree_version;
      state.generatedVersion = page.generated_version;
      state.jobStatus = page.status;
      if (page.nodes[0]) {
        summarize(page.nodes[0]);
        updateRow(page.nodes[0]);
      }
      const open = Array.from(document.querySelectorAll("#tree li[data-node] > ul[data-loaded]"));
      for (const ul of open) {
        const parent = ul.parentElement.dataset.node;
        const children = await api(base + "/tree?" + new URLSearchParams({ parent, limit: "500" }));
        children.nodes.forEach(updateRow);
      }
    } catch (error) {
      fail(error);
    }
  }

  function updateRow(node) {
    for (const row of document.querySelectorAll("#tree .node")) {
      if (row.dataset.node !== node.node_id) continue;
      const old = row.querySelector(".badges");
      if (old) old.replaceWith(counts(node.subtree));
    }
  }

  function closeForms() {
    for (const form of $("items").querySelectorAll("form")) form.remove();
  }

  function openReject() {
    const item = current();
    if (!item) return;
    closeForms();
    const card = cards()[state.selected];
    const input = el("input", { type: "text", "aria-label": "Reason for rejecting", placeholder: "Why is this item wrong?", required: true });
    const form = el("form", { class: "reject-form" },
      el("label", { text: "Reason" }), input,
      el("div", { class: "actions" },
        el("button", { type: "submit", text: "Reject" }),
        el("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => { form.remove(); card.focus(); } })));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!input.value.trim()) { input.focus(); return; }
      decide({ status: "rejected", reason: input.value.trim() });
    });
    card.append(form);
    input.focus();
  }

  function openEdit() {
    const item = current();
    if (!item) return;
    closeForms();
    const card = cards()[state.selected];
    const question = el("textarea", { rows: "2", "aria-label": "Question", class: "edit-question" });
    question.value = item.question;
    const answer = el("textarea", { rows: "4", "aria-label": "Answer", class: "edit-answer" });
    answer.value = item.answer;
    const form = el("form", { class: "edit-form" },
      el("label", { text: "Question" }), question,
      el("label", { text: "Answer" }), answer,
      el("div", { class: "actions" },
        el("button", { type: "submit", class: "save", text: "Save edit" }),
        el("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => { form.remove(); card.focus(); } })));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      decide({ question: question.value, answer: answer.value });
    });
    card.append(form);
    question.focus();
  }

  function typing(target) {
    return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT" || target.isContentEditable);
  }

  function onKey(event) {
    if (event.key === "Escape") {
      closeForms();
      if (state.selected >= 0 && cards()[state.selected]) cards()[state.selected].focus();
      return;
    }
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    switch (event.key) {
      case "j": event.preventDefault(); select(Math.min(state.selected + 1, state.items.length - 1), true); break;
      case "k": event.preventDefault(); select(Math.max(state.selected - 1, 0), true); break;
      case "a": event.preventDefault(); decide({ status: "approved" }); break;
      case "r": event.preventDefault(); openReject(); break;
      case "e": event.preventDefault(); openEdit(); break;
      default: break;
    }
  }

  async function saveText(event) {
    event.preventDefault();
    if (!state.section) return;
    try {
      const edited = await api(base + "/sections/" + encodeURIComponent(state.section), { method: "PUT", json: { text: $("text-input").value } });
      $("text-form").hidden = true;
      await loadTree();
      await openSection(edited.node_id, 0);
      say(edited.changed
        ? "Saved as tree version " + edited.tree_version + ". Regenerate to refresh the items of changed sections."
        : "The text is unchanged.");
    } catch (error) {
      fail(error);
    }
  }

  async function download(format) {
    try {
      say("Exporting " + format + "…");
      const response = await api(base + "/export?format=" + format, { raw: true });
      const blob = await response.blob();
      const link = el("a", { href: URL.createObjectURL(blob), download: job + "-reviewed." + format });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      say("Exported " + format + ".");
    } catch (error) {
      fail(error);
    }
  }

  async function regenerate() {
    try {
      const answer = await api(base + "/regenerate", { method: "POST" });
      say("Regenerating: " + answer.shards_to_generate + " of " + answer.shards_total + " shards changed…");
      $("regenerate").disabled = true;
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        const status = await api("/v1/flow/alignment/" + encodeURIComponent(job));
        if (["completed", "failed", "cancelled"].includes(status.status)) {
          say("Regeneration " + status.status + ": " + (status.status_message || ""), status.status !== "completed");
          break;
        }
      }
      await loadTree();
      if (state.section) await openSection(state.section, 0).catch(() => {});
    } catch (error) {
      fail(error);
    }
  }

  function startJobPage() {
    setUpKeyForm(() => loadTree().catch(fail));
    $("status-filter").addEventListener("change", () => {
      state.filter = $("status-filter").value;
      if (state.section) openSection(state.section, 0);
    });
    $("prev-page").addEventListener("click", () => openSection(state.section, Math.max(0, state.offset - PAGE)));
    $("next-page").addEventListener("click", () => openSection(state.section, state.offset + PAGE));
    $("edit-text").addEventListener("click", () => {
      if (!state.sectionData) return;
      $("text-input").value = state.sectionData.text;
      $("text-form").hidden = false;
      $("text-input").focus();
    });
    $("text-cancel").addEventListener("click", () => { $("text-form").hidden = true; $("edit-text").focus(); });
    $("text-form").addEventListener("submit", saveText);
    $("export-parquet").addEventListener("click", () => download("parquet"));
    $("export-jsonl").addEventListener("click", () => download("jsonl"));
    $("regenerate").addEventListener("click", regenerate);
    document.addEventListener("keydown", onKey);
    say("Loading…");
    loadTree().then(() => say("")).catch(fail);
  }

  if (body.dataset.page === "list") {
    setUpKeyForm(loadJobs);
    loadJobs();
  } else if (body.dataset.page === "job") {
    startJobPage();
  }
})();
