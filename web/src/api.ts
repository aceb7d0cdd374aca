// The public ContextCache API through the gateway (gRPC-Web), and the unlock tokens.
//
// Tokens live in this module's memory only — never in localStorage, sessionStorage, cookies
// or the URL — so closing or reloading the tab locks every project again.

import { Code, ConnectError, createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

import { CryptoService } from "./gen/contextcache/v1/crypto_pb.js";
import { IngestService } from "./gen/contextcache/v1/ingest_pb.js";
import { ProjectService } from "./gen/contextcache/v1/projects_pb.js";
import { QueryService } from "./gen/contextcache/v1/query_pb.js";

export interface Api {
  gatewayUrl: string;
  projects: Client<typeof ProjectService>;
  ingest: Client<typeof IngestService>;
  query: Client<typeof QueryService>;
  crypto: Client<typeof CryptoService>;
}

export function connectApi(gatewayUrl: string): Api {
  const transport = createGrpcWebTransport({ baseUrl: gatewayUrl, useBinaryFormat: true });
  return {
    gatewayUrl,
    projects: createClient(ProjectService, transport),
    ingest: createClient(IngestService, transport),
    query: createClient(QueryService, transport),
    crypto: createClient(CryptoService, transport),
  };
}

interface Unlock {
  token: string;
  expiresAt: Date;
}

/** Unlock tokens by project id, in memory. */
export class Tokens {
  private readonly unlocks = new Map<string, Unlock>();
  private readonly listeners = new Set<(projectId: string) => void>();

  set(projectId: string, token: string, expiresAt: Timestamp | undefined): void {
    const expiry = expiresAt ? timestampDate(expiresAt) : new Date(Date.now() + 3600_000);
    this.unlocks.set(projectId, { token, expiresAt: expiry });
    this.notify(projectId);
  }

  forget(projectId: string): void {
    if (this.unlocks.delete(projectId)) this.notify(projectId);
  }

  expiresAt(projectId: string): Date | undefined {
    return this.live(projectId)?.expiresAt;
  }

  isUnlocked(projectId: string): boolean {
    return this.live(projectId) !== undefined;
  }

  /** Call options carrying the project's token, for content RPCs. */
  auth(projectId: string, options: CallOptions = {}): CallOptions {
    const unlock = this.live(projectId);
    if (!unlock) throw new ConnectError("The project is locked: unlock it first", Code.Unauthenticated);
    return { ...options, headers: { ...options.headers, "x-unlock-token": unlock.token } };
  }

  /** Calls `listener` when a project is unlocked or locked again; returns the unsubscriber. */
  onChange(listener: (projectId: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private live(projectId: string): Unlock | undefined {
    const unlock = this.unlocks.get(projectId);
    if (unlock && unlock.expiresAt.getTime() <= Date.now()) {
      this.forget(projectId);
      return undefined;
    }
    return unlock;
  }

  private notify(projectId: string): void {
    for (const listener of this.listeners) listener(projectId);
  }
}

const CODE_NAMES: Partial<Record<Code, string>> = {
  [Code.InvalidArgument]: "Invalid input",
  [Code.NotFound]: "Not found",
  [Code.AlreadyExists]: "Already exists",
  [Code.PermissionDenied]: "Permission denied",
  [Code.Unauthenticated]: "Locked",
  [Code.ResourceExhausted]: "Rate limited",
  [Code.Unavailable]: "Unavailable",
  [Code.DeadlineExceeded]: "Timed out",
  [Code.Internal]: "Server error",
};

/** A message a person can act on, for any error of a call. */
export function describeError(error: unknown, gatewayUrl?: string): string {
  const failure = ConnectError.from(error);
  // fetch() rejects without a response when the gateway is down or CORS refuses this origin.
  if (failure.code === Code.Unknown && /fetch|network|load failed/i.test(failure.rawMessage)) {
    const where = gatewayUrl ? ` at ${gatewayUrl}` : "";
    return (
      `Cannot reach the gateway${where}: it is down, or it does not allow this page's origin ` +
      `(${window.location.origin}) — add it to CORS_ORIGINS.`
    );
  }
  if (failure.code === Code.Canceled) return "Cancelled";
  const label = CODE_NAMES[failure.code] ?? Code[failure.code];
  return `${label}: ${failure.rawMessage}`;
}

export function isCode(error: unknown, code: Code): boolean {
  return ConnectError.from(error).code === code;
}
