// Documents of an unlocked project: drag-and-drop upload of PDF and text files, URL entry,
// and one row per document whose progress bar follows the WatchDocument stream.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

import { describeError, isCode, type Api, type Tokens } from "../api.js";
import { h, replace } from "../dom.js";
import { bytes, count, enumLabel, when } from "../format.js";
import {
  DocumentStatus,
  SourceType,
  type Document,
  type IngestDocumentRequestSchema,
} from "../gen/contextcache/v1/ingest_pb.js";

const MAX_FILE_BYTES = 50 * 1024 * 1024;
const ACCEPTED = ".pdf,.txt,application/pdf,text/plain";
// A browser keeps about 6 HTTP/1.1 connections per host and every watch holds one open:
// more watches at once would starve the console's other calls to the gateway.
const MAX_WATCHES = 4;
// Stream failures worth opening the stream again for (Unknown: the network).
const RETRYABLE = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted, Code.Unknown]);
const MAX_WATCH_RETRIES = 5;

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

function terminal(status: DocumentStatus): boolean {
  return status === DocumentStatus.COMPLETED || status === DocumentStatus.FAILED;
}

class DocumentRow {
  readonly element: HTMLElement;
  private readonly title = h("div", { class: "doc-title" });
  private readonly meta = h("div", { class: "doc-meta" });
  private readonly status = h("span", { class: "status" });
  private readonly progress = h("progress", { max: 1 });
  private readonly progressLabel = h("span", { class: "progress-label" });
  private readonly error = h("div", { class: "doc-error", role: "alert" });
  private readonly actions = h("div", { class: "doc-actions" });

  constructor(
    label: string,
    private readonly handlers: { retry(id: string): void; remove(id: string): void },
  ) {
    this.element = h(
      "li",
      { class: "document", "data-testid": "document" },
      h("div", { class: "doc-main" }, this.title, this.meta),
      h("div", { class: "doc-progress" }, this.status, this.progress, this.progressLabel),
      this.actions,
      this.error,
    );
    this.title.textContent = label;
    this.pending("uploading");
  }

  /** Before the server answered: an indeterminate bar. */
  pending(what: string): void {
    this.element.dataset.status = what;
    this.status.textContent = what;
    this.progress.removeAttribute("value");
    this.progressLabel.textContent = "";
  }

  /** The upload was refused (bad file, duplicate, …): nothing was stored. */
  rejected(message: string): void {
    this.element.dataset.status = "rejected";
    this.status.textContent = "rejected";
    this.progress.value = 0;
    this.error.textContent = message;
    replace(this.actions, h("button", { class: "link", onclick: () => this.element.remove() }, "Dismiss"));
  }

  update(document: Document): void {
    const status = enumLabel(DocumentStatus[document.status]);
    this.element.dataset.documentId = document.id;
    this.element.dataset.status = status;
    this.title.textContent = document.title || document.source;
    const source = document.title && document.source !== document.title ? document.source : "";
    replace(
      this.meta,
      h("span", { class: "chip" }, enumLabel(SourceType[document.sourceType])),
      source && h("span", { class: "source" }, source),
      document.textBytes > 0n && h("span", {}, bytes(document.textBytes)),
      h("span", {}, `added ${when(document.createdAt)}`),
      document.attempts > 1 && h("span", { "data-testid": "attempts" }, `${document.attempts} attempts`),
    );
    this.status.textContent = status;
    this.status.className = `status status-${status}`;
    const total = Number(document.chunksTotal);
    const done = Number(document.chunksEmbedded);
    if (document.status === DocumentStatus.COMPLETED) {
      this.progress.value = 1;
      this.progressLabel.textContent = `${count(document.chunkCount, "chunk")} · ${count(document.factCount, "fact")}`;
    } else if (total > 0) {
      this.progress.value = done / total;
      this.progressLabel.textContent = `${done} / ${total} chunks embedded`;
    } else if (document.status === DocumentStatus.FAILED) {
      this.progress.value = 0;
      this.progressLabel.textContent = "";
    } else {
      this.progress.removeAttribute("value");
      this.progressLabel.textContent = status === "queued" ? "waiting for a worker" : "extracting";
    }
    this.error.textContent = document.error;
    replace(
      this.actions,
      document.status === DocumentStatus.FAILED &&
        h("button", { onclick: () => this.handlers.retry(document.id) }, "Retry"),
      terminal(document.status) && this.deleteButton(document.id),
    );
  }

  watchLost(message: string, resume: () => void): void {
    replace(
      this.error,
      `Progress updates stopped: ${message} `,
      h("button", { type: "button", class: "link", onclick: () => resume() }, "Resume"),
    );
  }

  /** Two clicks, so a stray one deletes nothing. */
  private deleteButton(id: string): HTMLButtonElement {
    const button = h("button", { class: "danger" }, "Delete");
    button.addEventListener("click", () => {
      if (button.dataset.armed) {
        button.disabled = true;
        this.handlers.remove(id);
      } else {
        button.dataset.armed = "yes";
        button.textContent = "Confirm delete";
        setTimeout(() => {
          delete button.dataset.armed;
          button.textContent = "Delete";
        }, 4000);
      }
    });
    return button;
  }
}

export class DocumentsView {
  readonly element: HTMLElement;
  private readonly list = h("ul", { class: "documents", "data-testid": "documents" });
  private readonly notice = h("div", { class: "form-error", role: "alert" });
  private readonly rows = new Map<string, DocumentRow>();
  private readonly aborts = new AbortController();
  private watching = 0;
  private readonly waitingWatches: Array<() => void> = [];

  constructor(
    private readonly api: Api,
    private readonly tokens: Tokens,
    private readonly projectId: string,
    private readonly onSettled: () => void,
  ) {
    const picker = h("input", { type: "file", multiple: true, accept: ACCEPTED, hidden: true });
    picker.addEventListener("change", () => {
      void this.uploadAll([...(picker.files ?? [])]);
      picker.value = "";
    });
    const dropzone = h(
      "div",
      { class: "dropzone", "data-testid": "dropzone", tabindex: 0, role: "button", "aria-label": "Upload PDF or text files" },
      h("strong", {}, "Drop PDF or text files here"),
      " or ",
      h("button", { type: "button", class: "link", onclick: () => picker.click() }, "choose files"),
      h("div", { class: "hint" }, ".pdf and .txt, up to 50 MB each"),
      picker,
    );
    dropzone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        picker.click();
      }
    });
    dropzone.addEventListener("dragover", (event) => {
      event.preventDefault();
      dropzone.classList.add("over");
    });
    dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
    dropzone.addEventListener("drop", (event) => {
      event.preventDefault();
      dropzone.classList.remove("over");
      void this.uploadAll([...(event.dataTransfer?.files ?? [])]);
    });

    const url = h("input", {
      type: "url",
      name: "url",
      placeholder: "https://example.org/page.html",
      required: true,
      maxlength: 2000,
      "aria-label": "Document URL",
    });
    const urlForm = h(
      "form",
      { class: "inline-form url-form", "data-testid": "url-form" },
      url,
      h("button", { type: "submit" }, "Add URL"),
    );
    urlForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const address = url.value.trim();
      url.value = "";
      void this.ingest(address, { case: "url", value: { url: address } });
    });

    this.element = h(
      "section",
      { class: "panel", "data-testid": "documents-view" },
      h("div", { class: "add" }, dropzone, urlForm),
      this.notice,
      this.list,
    );
    void this.load();
  }

  dispose(): void {
    this.aborts.abort();
  }

  private async load(): Promise<void> {
    try {
      const { documents } = await this.api.ingest.listDocuments(
        { projectId: this.projectId, pageSize: 100 },
        this.tokens.auth(this.projectId, { signal: this.aborts.signal }),
      );
      for (const document of documents) {
        const row = this.row(document.id, document.title || document.source);
        row.update(document);
        this.list.append(row.element);
        if (!terminal(document.status)) void this.watch(document.id);
      }
    } catch (error) {
      this.fail(error);
    }
  }

  private async uploadAll(files: File[]): Promise<void> {
    for (const file of files) {
      if (file.size > MAX_FILE_BYTES) {
        const row = new DocumentRow(file.name, this);
        this.list.prepend(row.element);
        row.rejected("File too large. Maximum size is 50 MB");
        continue;
      }
      const content = new Uint8Array(await file.arrayBuffer());
      await this.ingest(file.name, { case: "file", value: { filename: file.name, content } });
    }
  }

  private async ingest(
    label: string,
    source: MessageInitShape<typeof IngestDocumentRequestSchema>["source"],
  ): Promise<void> {
    const row = new DocumentRow(label, this);
    this.list.prepend(row.element);
    try {
      const request: MessageInitShape<typeof IngestDocumentRequestSchema> = {
        projectId: this.projectId,
        source,
        // Queued: the call returns at once and WatchDocument reports the progress.
        background: true,
      };
      const { document } = await this.api.ingest.ingestDocument(
        request,
        this.tokens.auth(this.projectId, { signal: this.aborts.signal }),
      );
      if (!document) throw new Error("the gateway answered without a document");
      this.rows.set(document.id, row);
      row.update(document);
      if (!terminal(document.status)) void this.watch(document.id);
      else this.onSettled();
    } catch (error) {
      if (isCode(error, Code.Unauthenticated)) this.tokens.forget(this.projectId);
      row.rejected(describeError(error, this.api.gatewayUrl));
    }
  }

  /**
   * Follows a document until it is completed or failed. A dropped stream (the gateway finding
   * the ingest service busy or restarting, an idle timeout, the network) is opened again after
   * a growing pause; after a few failures in a row the row offers to resume instead.
   */
  private async watch(documentId: string): Promise<void> {
    await this.watchSlot();
    const signal = this.aborts.signal;
    try {
      for (let failures = 0; ; ) {
        try {
          const stream = this.api.ingest.watchDocument(
            { projectId: this.projectId, documentId },
            this.tokens.auth(this.projectId, { signal }),
          );
          for await (const { document } of stream) {
            if (!document) continue;
            failures = 0;
            this.rows.get(documentId)?.update(document);
            if (terminal(document.status)) {
              this.onSettled();
              return;
            }
          }
          failures += 1; // the stream ended before the document did
        } catch (error) {
          if (signal.aborted) return;
          if (!RETRYABLE.has(ConnectError.from(error).code) || failures >= MAX_WATCH_RETRIES) {
            if (isCode(error, Code.Unauthenticated)) this.tokens.forget(this.projectId);
            this.rows.get(documentId)?.watchLost(describeError(error, this.api.gatewayUrl), () => void this.watch(documentId));
            return;
          }
          failures += 1;
        }
        await pause(Math.min(500 * 2 ** failures, 8000), signal);
        if (signal.aborted) return;
      }
    } finally {
      this.watching -= 1;
      this.waitingWatches.shift()?.();
    }
  }

  private watchSlot(): Promise<void> {
    if (this.watching < MAX_WATCHES) {
      this.watching += 1;
      return Promise.resolve();
    }
    return new Promise((resolve) =>
      this.waitingWatches.push(() => {
        this.watching += 1;
        resolve();
      }),
    );
  }

  // DocumentRow's handlers.
  retry(documentId: string): void {
    void (async () => {
      try {
        const { document } = await this.api.ingest.retryDocument(
          { projectId: this.projectId, documentId, background: true },
          this.tokens.auth(this.projectId),
        );
        if (document) this.rows.get(documentId)?.update(document);
        void this.watch(documentId);
      } catch (error) {
        this.fail(error);
      }
    })();
  }

  remove(documentId: string): void {
    void (async () => {
      try {
        await this.api.ingest.deleteDocument(
          { projectId: this.projectId, documentId },
          this.tokens.auth(this.projectId),
        );
        this.rows.get(documentId)?.element.remove();
        this.rows.delete(documentId);
        this.onSettled();
      } catch (error) {
        this.fail(error);
      }
    })();
  }

  private row(documentId: string, label: string): DocumentRow {
    const row = new DocumentRow(label, this);
    this.rows.set(documentId, row);
    return row;
  }

  private fail(error: unknown): void {
    if (this.aborts.signal.aborted) return;
    if (isCode(error, Code.Unauthenticated)) this.tokens.forget(this.projectId);
    this.notice.textContent = describeError(error, this.api.gatewayUrl);
  }
}
