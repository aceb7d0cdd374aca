// Where the gateway is: read at start-up from /config.json, which the server of these files
// writes (runtime/console.py from the stack's settings). Nothing here is built in, so the
// same build runs against any deployment.

export interface ConsoleConfig {
  /** Absolute URL of the Envoy gateway (gRPC-Web), or "/" for this origin. */
  gatewayUrl: string;
}

export async function loadConfig(): Promise<ConsoleConfig> {
  const response = await fetch("config.json", { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`config.json: HTTP ${response.status}`);
  }
  const config = (await response.json()) as Partial<ConsoleConfig>;
  if (typeof config.gatewayUrl !== "string" || config.gatewayUrl === "") {
    throw new Error("config.json has no gatewayUrl");
  }
  // Relative URLs ("/") resolve against the console's own address.
  return { gatewayUrl: new URL(config.gatewayUrl, window.location.href).href.replace(/\/$/, "") };
}
