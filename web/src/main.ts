// ContextCache web console: projects, documents, search and audit, through the gateway's
// gRPC-Web endpoint only (the public API; nothing reaches around Envoy).

import "./style.css";

import { connectApi, Tokens } from "./api.js";
import { loadConfig } from "./config.js";
import { h, replace } from "./dom.js";
import type { Project } from "./gen/contextcache/v1/projects_pb.js";
import { ProjectList, ProjectPage } from "./views/projects.js";

async function start(root: HTMLElement): Promise<void> {
  const banner = h("div", { class: "banner", role: "alert", "data-testid": "banner", hidden: true });
  const gateway = h("span", { class: "gateway", "data-testid": "gateway" }, "…");
  const workspace = h(
    "main",
    { class: "workspace-area" },
    h("p", { class: "panel muted" }, "Select a project, or create one."),
  );
  replace(
    root,
    h("header", { class: "topbar" }, h("h1", {}, "ContextCache"), h("span", { class: "muted" }, "console"), gateway),
    banner,
  );
  const showError = (message: string) => {
    banner.textContent = message;
    banner.hidden = false;
  };

  let config;
  try {
    config = await loadConfig();
  } catch (error) {
    showError(`This console cannot find its gateway: ${(error as Error).message}.`);
    return;
  }
  gateway.textContent = `gateway ${config.gatewayUrl}`;
  const api = connectApi(config.gatewayUrl);
  const tokens = new Tokens();
  let page: ProjectPage | undefined;
  const open = (project: Project) => {
    page?.dispose();
    page = new ProjectPage(api, tokens, project, (count) => projects.setDocumentCount(project.id, count));
    replace(workspace, page.element);
  };
  const projects: ProjectList = new ProjectList(api, tokens, open, showError);
  root.append(h("div", { class: "layout" }, projects.element, workspace));
  await projects.refresh();
}

void start(document.getElementById("app") as HTMLElement);
