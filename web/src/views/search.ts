// Search an unlocked project: a query, a retrieval mode, and the ranked passages with their
// scores and citations, the query's words highlighted.

import { describeError, isCode, type Api, type Tokens } from "../api.js";
import { h, replace } from "../dom.js";
import { count, enumLabel } from "../format.js";
import { SourceType } from "../gen/contextcache/v1/ingest_pb.js";
import { RetrievalMode, type Passage, type QueryResponse } from "../gen/contextcache/v1/query_pb.js";
import { highlight } from "../highlight.js";
import { Code } from "@connectrpc/connect";

const MODES: Array<[RetrievalMode, string, string]> = [
  [RetrievalMode.HYBRID, "Hybrid", "dense and keyword rankings fused (reciprocal rank)"],
  [RetrievalMode.DENSE, "Dense", "embedding similarity only (cosine)"],
  [RetrievalMode.KEYWORD, "Keyword", "BM25 keyword match only"],
];
const SCORE_NAMES: Partial<Record<RetrievalMode, string>> = {
  [RetrievalMode.HYBRID]: "fused rank score",
  [RetrievalMode.DENSE]: "cosine similarity",
  [RetrievalMode.KEYWORD]: "BM25",
};

export class SearchView {
  readonly element: HTMLElement;
  private readonly results = h("div", { class: "results", "data-testid": "results", "aria-live": "polite" });

  constructor(
    private readonly api: Api,
    private readonly tokens: Tokens,
    private readonly projectId: string,
  ) {
    const query = h("input", {
      type: "search",
      name: "query",
      placeholder: "Ask a question about this project's documents",
      required: true,
      maxlength: 1000,
      "aria-label": "Query",
    });
    const modes = h(
      "fieldset",
      { class: "modes", "data-testid": "modes" },
      h("legend", {}, "Mode"),
      ...MODES.map(([mode, label, help], index) =>
        h(
          "label",
          { title: help },
          h("input", { type: "radio", name: "mode", value: mode, checked: index === 0 }),
          label,
        ),
      ),
    );
    const topK = h(
      "select",
      { name: "top_k", "aria-label": "Passages" },
      ...[3, 5, 10, 20, 50].map((k) => h("option", { value: k, selected: k === 5 }, `${k} passages`)),
    );
    const form = h(
      "form",
      { class: "search-form", "data-testid": "search-form" },
      query,
      h("button", { type: "submit" }, "Search"),
      modes,
      topK,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const mode = Number(new FormData(form).get("mode")) as RetrievalMode;
      void this.search(query.value, mode, Number(topK.value));
    });
    this.element = h("section", { class: "panel", "data-testid": "search-view" }, form, this.results);
  }

  private async search(text: string, mode: RetrievalMode, topK: number): Promise<void> {
    replace(this.results, h("p", { class: "muted" }, "Searching…"));
    try {
      const response = await this.api.query.query(
        { projectId: this.projectId, query: text, topK, mode },
        this.tokens.auth(this.projectId),
      );
      this.show(text, response, mode);
    } catch (error) {
      if (isCode(error, Code.Unauthenticated)) this.tokens.forget(this.projectId);
      replace(this.results, h("p", { class: "form-error", role: "alert" }, describeError(error, this.api.gatewayUrl)));
    }
  }

  private show(query: string, response: QueryResponse, requested: RetrievalMode): void {
    const mode = response.mode === RetrievalMode.UNSPECIFIED ? requested : response.mode;
    const t = response.timings;
    const summary = h(
      "p",
      { class: "muted", "data-testid": "query-summary" },
      `${count(response.passages.length, "passage")}, ${enumLabel(RetrievalMode[mode])} mode` +
        (t ? ` · ${t.totalMs.toFixed(0)} ms (embed ${t.embedMs.toFixed(0)}, search ${t.searchMs.toFixed(0)}, decrypt ${t.decryptMs.toFixed(0)})` : "") +
        (response.cached ? " · from the cache" : ""),
    );
    if (response.passages.length === 0) {
      replace(this.results, summary, h("p", {}, "No passage matches this query."));
      return;
    }
    replace(
      this.results,
      summary,
      h("ol", { class: "passages" }, ...response.passages.map((p, i) => this.passage(p, i + 1, query, mode))),
    );
  }

  private passage(passage: Passage, rank: number, query: string, mode: RetrievalMode): HTMLElement {
    const title = passage.documentTitle || passage.source;
    return h(
      "li",
      { class: "passage", "data-testid": "passage" },
      h(
        "header",
        {},
        h("span", { class: "rank" }, `#${rank}`),
        h("span", { class: "score", title: SCORE_NAMES[mode] ?? "score" }, passage.score.toFixed(4)),
        h(
          "cite",
          { "data-testid": "citation" },
          h("strong", {}, title),
          passage.source && passage.source !== title && h("span", { class: "source" }, passage.source),
          h("span", { class: "chip" }, enumLabel(SourceType[passage.sourceType])),
          h("span", {}, `chunk ${passage.chunkIndex}`),
          h("span", {}, `chars ${passage.startOffset}–${passage.endOffset}`),
        ),
      ),
      h("p", { class: "passage-text" }, ...highlight(passage.text, query)),
    );
  }
}
