// Projects: the list with a create form (sidebar), and one project's page — its stats, the
// unlock form, and the Documents / Search / Audit tabs.

import { Code } from "@connectrpc/connect";

import { describeError, isCode, type Api, type Tokens } from "../api.js";
import { h, replace } from "../dom.js";
import { bytes, clock, count, when } from "../format.js";
import type { Project } from "../gen/contextcache/v1/projects_pb.js";
import { AuditView } from "./audit.js";
import { DocumentsView } from "./documents.js";
import { SearchView } from "./search.js";

const MIN_PASSPHRASE = 20;

export class ProjectList {
  readonly element: HTMLElement;
  private readonly list = h("ul", { class: "projects", "data-testid": "projects" });
  private readonly notice = h("div", { class: "form-error", role: "alert" });
  private projects: Project[] = [];
  private selectedId = "";

  constructor(
    private readonly api: Api,
    private readonly tokens: Tokens,
    private readonly onSelect: (project: Project) => void,
    private readonly onGatewayError: (message: string) => void,
  ) {
    const name = h("input", { name: "name", required: true, maxlength: 200, placeholder: "Name", "aria-label": "Name" });
    const description = h("input", {
      name: "description",
      maxlength: 2000,
      placeholder: "Description (optional)",
      "aria-label": "Description",
    });
    const passphrase = h("input", {
      name: "passphrase",
      type: "password",
      required: true,
      minlength: MIN_PASSPHRASE,
      maxlength: 1024,
      autocomplete: "new-password",
      placeholder: `Passphrase (${MIN_PASSPHRASE}+ characters)`,
      "aria-label": "Passphrase",
    });
    const create = h(
      "form",
      { class: "stacked-form", "data-testid": "create-project" },
      h("h3", {}, "New project"),
      name,
      description,
      passphrase,
      h(
        "p",
        { class: "hint" },
        "The passphrase is never stored: without it the content cannot be read, by anyone.",
      ),
      h("button", { type: "submit" }, "Create project"),
      this.notice,
    );
    create.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.create(name.value, description.value, passphrase.value).then((created) => {
        if (created) create.reset();
      });
    });
    this.element = h(
      "aside",
      { class: "sidebar" },
      h("h2", {}, "Projects"),
      this.list,
      create,
    );
    tokens.onChange(() => this.render());
  }

  async refresh(): Promise<void> {
    try {
      const { projects } = await this.api.projects.listProjects({ pageSize: 100 });
      this.projects = projects;
      this.render();
    } catch (error) {
      this.onGatewayError(describeError(error, this.api.gatewayUrl));
    }
  }

  /** Keeps a project's document count current as its page learns it (no extra call). */
  setDocumentCount(projectId: string, count: bigint): void {
    const project = this.projects.find((p) => p.id === projectId);
    if (project && project.documentCount !== count) {
      project.documentCount = count;
      this.render();
    }
  }

  select(project: Project): void {
    this.selectedId = project.id;
    this.render();
    this.onSelect(project);
  }

  private async create(name: string, description: string, passphrase: string): Promise<boolean> {
    this.notice.textContent = "";
    try {
      const { project } = await this.api.projects.createProject({ name, description, passphrase });
      if (!project) return false;
      this.projects = [project, ...this.projects.filter((p) => p.id !== project.id)];
      this.select(project);
      return true;
    } catch (error) {
      this.notice.textContent = describeError(error, this.api.gatewayUrl);
      return false;
    }
  }

  private render(): void {
    replace(
      this.list,
      ...this.projects.map((project) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              class: project.id === this.selectedId ? "project selected" : "project",
              "data-project-id": project.id,
              onclick: () => this.select(project),
            },
            h("span", { class: "project-name" }, project.name),
            h(
              "span",
              { class: "project-meta" },
              this.tokens.isUnlocked(project.id) ? "unlocked · " : "locked · ",
              count(project.documentCount, "document"),
            ),
          ),
        ),
      ),
    );
    if (this.projects.length === 0) this.list.append(h("li", { class: "muted" }, "No projects yet."));
  }
}

type Tab = "documents" | "search" | "audit";

export class ProjectPage {
  readonly element: HTMLElement;
  private readonly stats = h("dl", { class: "stats", "data-testid": "stats" });
  private readonly lockArea = h("div", { class: "lock-area" });
  private readonly tabBar = h("nav", { class: "tabs", role: "tablist" });
  private readonly content = h("div", { class: "tab-content" });
  private tab: Tab = "documents";
  private documents?: DocumentsView;
  private expiryTimer?: number;
  private statsTimer?: number;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly api: Api,
    private readonly tokens: Tokens,
    private readonly project: Project,
    private readonly onDocumentCount: (count: bigint) => void,
  ) {
    this.element = h(
      "section",
      { class: "workspace", "data-testid": "project-page", "data-project-id": project.id },
      h(
        "header",
        { class: "project-header" },
        h("div", {}, h("h2", {}, project.name), project.description && h("p", { class: "muted" }, project.description)),
        this.lockArea,
      ),
      this.stats,
      this.tabBar,
      this.content,
    );
    this.unsubscribe = tokens.onChange((projectId) => {
      if (projectId === project.id) this.render();
    });
    this.render();
    void this.refreshStats();
  }

  dispose(): void {
    this.unsubscribe();
    this.documents?.dispose();
    window.clearTimeout(this.expiryTimer);
    window.clearTimeout(this.statsTimer);
  }

  /** One GetProjectStats for a burst of documents settling (the gateway limits calls). */
  private statsSoon(): void {
    window.clearTimeout(this.statsTimer);
    this.statsTimer = window.setTimeout(() => void this.refreshStats(), 500);
  }

  async refreshStats(): Promise<void> {
    try {
      const { stats } = await this.api.projects.getProjectStats({ projectId: this.project.id });
      if (!stats) return;
      this.onDocumentCount(
        stats.documentsQueued + stats.documentsProcessing + stats.documentsCompleted + stats.documentsFailed,
      );
      const item = (label: string, value: string, testid: string) =>
        h("div", { "data-testid": testid }, h("dt", {}, label), h("dd", {}, value));
      replace(
        this.stats,
        item("completed", String(stats.documentsCompleted), "stat-completed"),
        item("in progress", String(stats.documentsQueued + stats.documentsProcessing), "stat-in-progress"),
        item("failed", String(stats.documentsFailed), "stat-failed"),
        item("chunks", String(stats.chunkCount), "stat-chunks"),
        item("facts", String(stats.factCount), "stat-facts"),
        item("stored", bytes(stats.storedBytes), "stat-stored"),
        item("last ingest", when(stats.lastIngestAt), "stat-last-ingest"),
      );
    } catch (error) {
      replace(this.stats, h("div", { class: "form-error" }, describeError(error, this.api.gatewayUrl)));
    }
  }

  private render(): void {
    const unlocked = this.tokens.isUnlocked(this.project.id);
    this.element.dataset.locked = unlocked ? "false" : "true";
    window.clearTimeout(this.expiryTimer);
    if (unlocked) {
      const expires = this.tokens.expiresAt(this.project.id) as Date;
      // Lock the page when the token expires, rather than failing the next call.
      this.expiryTimer = window.setTimeout(() => this.tokens.forget(this.project.id), expires.getTime() - Date.now());
      replace(
        this.lockArea,
        h("span", { class: "chip unlocked", "data-testid": "lock-state" }, `Unlocked until ${clock(expires)}`),
        h("button", { type: "button", onclick: () => this.tokens.forget(this.project.id) }, "Lock"),
      );
    } else {
      replace(this.lockArea, h("span", { class: "chip locked", "data-testid": "lock-state" }, "Locked"), this.unlockForm());
    }
    replace(
      this.tabBar,
      ...(["documents", "search", "audit"] as Tab[]).map((tab) =>
        h(
          "button",
          {
            type: "button",
            role: "tab",
            "aria-selected": String(tab === this.tab),
            "data-tab": tab,
            onclick: () => {
              this.tab = tab;
              this.render();
            },
          },
          tab[0].toUpperCase() + tab.slice(1),
        ),
      ),
    );
    this.showTab(unlocked);
  }

  private showTab(unlocked: boolean): void {
    this.documents?.dispose();
    this.documents = undefined;
    if (this.tab === "audit") {
      replace(this.content, new AuditView(this.api, this.tokens, this.project).element);
    } else if (!unlocked) {
      replace(
        this.content,
        h("p", { class: "panel muted" }, `Unlock the project to see its ${this.tab === "search" ? "search" : "documents"}.`),
      );
    } else if (this.tab === "documents") {
      this.documents = new DocumentsView(this.api, this.tokens, this.project.id, () => this.statsSoon());
      replace(this.content, this.documents.element);
    } else {
      replace(this.content, new SearchView(this.api, this.tokens, this.project.id).element);
    }
  }

  private unlockForm(): HTMLFormElement {
    const passphrase = h("input", {
      type: "password",
      name: "passphrase",
      required: true,
      autocomplete: "current-password",
      placeholder: "Passphrase",
      "aria-label": "Passphrase",
    });
    const notice = h("span", { class: "form-error", role: "alert" });
    const form = h(
      "form",
      { class: "inline-form", "data-testid": "unlock-form" },
      passphrase,
      h("button", { type: "submit" }, "Unlock"),
      notice,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void (async () => {
        notice.textContent = "";
        try {
          const response = await this.api.projects.unlockProject({
            projectId: this.project.id,
            passphrase: passphrase.value,
          });
          this.tokens.set(this.project.id, response.unlockToken, response.expiresAt);
        } catch (error) {
          notice.textContent = isCode(error, Code.PermissionDenied)
            ? "Wrong passphrase."
            : describeError(error, this.api.gatewayUrl);
        }
      })();
    });
    return form;
  }
}
