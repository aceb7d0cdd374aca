import { defineConfig, type Plugin } from "vite";

// The console is static files: runtime/console.py (make run) or any static server serves
// dist/, and its /config.json says where the gateway is. `npm run dev` answers /config.json
// itself, from CONSOLE_GATEWAY_URL or GATEWAY_PORT, as runtime/console.py does.
function devConfig(): Plugin {
  return {
    name: "contextcache-dev-config",
    configureServer(server) {
      server.middlewares.use("/config.json", (req, res) => {
        const host = (req.headers.host ?? "localhost").replace(/:\d+$/, "");
        const port = process.env.GATEWAY_PORT ?? "8080";
        const gatewayUrl = process.env.CONSOLE_GATEWAY_URL ?? `http://${host}:${port}`;
        res.setHeader("Content-Type", "application/json");
        res.end(JSON.stringify({ gatewayUrl }));
      });
    },
  };
}

export default defineConfig({
  plugins: [devConfig()],
  build: {
    target: "es2022",
    // The generated protobuf descriptors are most of the bundle; one chunk keeps loading simple.
    chunkSizeWarningLimit: 1024,
  },
  server: { port: 3000, strictPort: true },
});
