// A project's audit log: the "chain verified" badge from VerifyAuditChain (no token needed)
// and, once unlocked, the event timeline from ListAuditEvents.
//
// The first head this page verifies is pinned (in memory) and sent with every later
// verification, so a chain truncated while the page is open fails verification.

import { Code } from "@connectrpc/connect";

import { describeError, isCode, type Api, type Tokens } from "../api.js";
import { h, replace } from "../dom.js";
import { enumLabel, hex, when } from "../format.js";
import { AuditEventType, type AuditEvent, type AuditHead } from "../gen/contextcache/v1/crypto_pb.js";
import type { Project } from "../gen/contextcache/v1/projects_pb.js";

const pinnedHeads = new Map<string, AuditHead>();

export class AuditView {
  readonly element: HTMLElement;
  private readonly badge = h("div", { class: "badge", "data-testid": "audit-badge", "aria-live": "polite" });
  private readonly timeline = h("ol", { class: "timeline", "data-testid": "audit-timeline" });
  private readonly more = h("button", { type: "button", hidden: true }, "Older events");
  private readonly notice = h("div", { class: "form-error", role: "alert" });
  private nextPageToken = "";

  constructor(
    private readonly api: Api,
    private readonly tokens: Tokens,
    private readonly project: Project,
  ) {
    this.more.addEventListener("click", () => void this.loadEvents(this.nextPageToken));
    const refresh = h("button", { type: "button", onclick: () => this.refresh() }, "Verify again");
    this.element = h(
      "section",
      { class: "panel", "data-testid": "audit-view" },
      h("div", { class: "audit-head" }, this.badge, refresh),
      this.notice,
      this.timeline,
      this.more,
    );
    this.refresh();
  }

  refresh(): void {
    void this.verify();
    replace(this.timeline);
    if (this.tokens.isUnlocked(this.project.id)) {
      void this.loadEvents("");
    } else {
      this.notice.textContent = "Unlock the project to read its events; verification needs no passphrase.";
    }
  }

  private async verify(): Promise<void> {
    this.badge.className = "badge pending";
    this.badge.textContent = "Verifying the audit chain…";
    try {
      const pinned = pinnedHeads.get(this.project.id);
      const result = await this.api.crypto.verifyAuditChain({
        projectId: this.project.id,
        // The key GetProject/ListProjects gave: signatures must verify under it.
        publicKey: this.project.publicKey,
        pinnedHead: pinned,
      });
      if (result.valid) {
        if (!pinned && result.head) pinnedHeads.set(this.project.id, result.head);
        this.badge.className = "badge verified";
        this.badge.dataset.state = "verified";
        replace(
          this.badge,
          h("span", { class: "icon", "aria-hidden": "true" }, "✔"),
          h("strong", {}, "Chain verified"),
          ` · ${result.eventsVerified} events signed and hash-chained`,
          result.head && ` · head #${result.head.seq} ${hex(result.head.hash)}…`,
        );
      } else {
        this.badge.className = "badge broken";
        this.badge.dataset.state = "broken";
        replace(
          this.badge,
          h("span", { class: "icon", "aria-hidden": "true" }, "✘"),
          h("strong", {}, `Chain broken at event #${result.firstBrokenSeq}`),
          `: ${result.reason}`,
        );
      }
    } catch (error) {
      this.badge.className = "badge broken";
      this.badge.dataset.state = "error";
      this.badge.textContent = `Could not verify: ${describeError(error, this.api.gatewayUrl)}`;
    }
  }

  private async loadEvents(pageToken: string): Promise<void> {
    this.notice.textContent = "";
    try {
      const page = await this.api.crypto.listAuditEvents(
        { projectId: this.project.id, pageSize: 100, pageToken },
        this.tokens.auth(this.project.id),
      );
      this.timeline.append(...page.events.map((event) => this.event(event)));
      this.nextPageToken = page.nextPageToken;
      this.more.hidden = page.nextPageToken === "";
    } catch (error) {
      if (isCode(error, Code.Unauthenticated)) this.tokens.forget(this.project.id);
      this.notice.textContent = describeError(error, this.api.gatewayUrl);
    }
  }

  private event(event: AuditEvent): HTMLElement {
    const attributes = Object.entries(event.attributes).sort(([a], [b]) => a.localeCompare(b));
    return h(
      "li",
      { class: "event", "data-testid": "audit-event" },
      h("span", { class: "seq" }, `#${event.seq}`),
      h("span", { class: "event-type" }, enumLabel(AuditEventType[event.type])),
      h("time", {}, when(event.time)),
      event.actor && h("span", { class: "actor" }, event.actor),
      attributes.length > 0 &&
        h("span", { class: "attributes" }, attributes.map(([k, v]) => `${k}=${v}`).join("  ")),
      h("code", { class: "hash", title: "hash (signed)" }, `${hex(event.hash)}…`),
    );
  }
}
