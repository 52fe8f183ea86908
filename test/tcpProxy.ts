// A TCP proxy in front of the test Postgres, so a test can take "the
// database" away from some clients without touching the shared server.
import net from "node:net";

export interface TcpProxy {
  /** The proxy's port on 127.0.0.1. */
  readonly port: number;
  /** `url` with its host and port replaced by the proxy's. */
  url(url: string): string;
  /**
   * Drops every proxied connection and refuses new ones (ECONNREFUSED, as
   * from a server that is restarting) until resume().
   */
  cut(): Promise<void>;
  /** Accepts connections again, on the same port. */
  resume(): Promise<void>;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1 (a free port) and forwards each connection to `target`. */
export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // A reset is what the test is about; it must not become an uncaught error.
    socket.on("error", () => socket.destroy());
  };
  const makeServer = () =>
    net.createServer((client) => {
      const upstream = net.connect(target.port, target.host);
      track(client);
      track(upstream);
      client.pipe(upstream);
      upstream.pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
  const listen = (server: net.Server, port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
  const closeServer = (server: net.Server) =>
    new Promise<void>((resolve) => server.close(() => resolve()));
  const dropAll = () => {
    for (const socket of sockets) socket.destroy();
  };

  let server: net.Server | undefined = makeServer();
  await listen(server, 0);
  const port = (server.address() as net.AddressInfo).port;

  const proxy: TcpProxy = {
    port,
    url(url) {
      const u = new URL(url);
      u.hostname = "127.0.0.1";
      u.port = String(port);
      return u.toString();
    },
    async cut() {
      const s = server;
      server = undefined;
      if (s) {
        const closed = closeServer(s);
        dropAll();
        await closed;
      }
      dropAll();
    },
    async resume() {
      if (server) return;
      const s = makeServer();
      // The port was ours a moment ago; the kernel may take a moment to let go.
      for (let attempt = 1; ; attempt++) {
        try {
          await listen(s, port);
          break;
        } catch (error) {
          if ((error as { code?: string }).code !== "EADDRINUSE" || attempt >= 100) throw error;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
      server = s;
    },
    async close() {
      await proxy.cut();
    },
  };
  return proxy;
}
