package harbor;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * harbor: a small HTTP service using only the JDK. Build with `sh build.sh`,
 * then run `java -jar build/harbor.jar` from the release directory.
 *
 * Environment: HOST (bind address, default 127.0.0.1), PORT (default 8080).
 * Endpoints: /healthz ("ok"), / (JSON about this process), /version (the revision).
 */
public final class Main {
    /** Bumped by every commit on master (see examples/build_repos.py), so `/` tells them apart. */
    static final String VERSION = "1";

    private static final DateTimeFormatter LOG_TIME = DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSSX");

    private Main() {
    }

    public static void main(String[] args) throws IOException {
        String host = env("HOST", "127.0.0.1");
        int port = Integer.parseInt(env("PORT", "8080"));

        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 64);
        ExecutorService workers = Executors.newFixedThreadPool(8);
        server.setExecutor(workers);
        server.createContext("/", Main::handle);
        // SIGTERM (supervisord's stop signal) runs the shutdown hooks and then the JVM exits.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            log("harbor: shutting down");
            server.stop(1); // give requests in flight up to a second
            workers.shutdownNow();
        }, "harbor-shutdown"));
        server.start();
        log("harbor " + VERSION + ": listening on " + host + ":" + port + " (pid " + ProcessHandle.current().pid() + ")");
    }

    private static void handle(HttpExchange exchange) throws IOException {
        int status = 500;
        byte[] data = new byte[0];
        try (InputStream in = exchange.getRequestBody()) {
            in.readAllBytes(); // drain the request body, if any
            String path = exchange.getRequestURI().getPath();
            String ctype = "text/plain; charset=utf-8";
            String body;
            if (path.equals("/healthz")) {
                status = 200;
                body = "ok";
            } else if (path.equals("/")) {
                status = 200;
                ctype = "application/json";
                body = index();
            } else if (path.equals("/version")) {
                status = 200;
                body = revision();
            } else {
                status = 404;
                body = "not found";
            }
            data = body.getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("Content-Type", ctype);
            exchange.sendResponseHeaders(status, data.length == 0 ? -1 : data.length);
            if (data.length > 0) {
                try (OutputStream out = exchange.getResponseBody()) {
                    out.write(data);
                }
            }
        } finally {
            access(exchange, status, data.length);
            exchange.close();
        }
    }

    private static String index() {
        return "{\"service\": \"harbor\""
                + ", \"version\": " + json(VERSION)
                + ", \"revision\": " + json(revision())
                + ", \"hostname\": " + json(hostname())
                + ", \"pid\": " + ProcessHandle.current().pid()
                + "}";
    }

    /** The commit this release was built from: the deploy tool writes it to ./REVISION. */
    static String revision() {
        try {
            String text = Files.readString(Path.of("REVISION"), StandardCharsets.UTF_8).strip();
            return text.isEmpty() ? "unknown" : text;
        } catch (IOException | RuntimeException e) {
            return "unknown";
        }
    }

    /**
     * The host's name as gethostname(2) gives it. /proc/sys/kernel/hostname comes first: it is the
     * UTS namespace's name (e.g. "web-0"), while InetAddress.getLocalHost() throws when that name does
     * not resolve and /etc/hostname or an inherited HOSTNAME may belong to another namespace.
     */
    static String hostname() {
        String name = readFirstLine("/proc/sys/kernel/hostname");
        if (name != null) {
            return name;
        }
        try {
            name = InetAddress.getLocalHost().getHostName();
            if (name != null && !name.isBlank()) {
                return name;
            }
        } catch (IOException e) {
            // unresolvable name: fall through
        }
        name = System.getenv("HOSTNAME");
        if (name != null && !name.isBlank()) {
            return name.strip();
        }
        name = readFirstLine("/etc/hostname");
        return name != null ? name : "unknown";
    }

    private static String readFirstLine(String file) {
        try {
            String text = Files.readString(Path.of(file), StandardCharsets.UTF_8).strip();
            return text.isEmpty() ? null : text.lines().findFirst().orElse(null);
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }

    private static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isBlank() ? fallback : value.strip();
    }

    /** A JSON string literal. */
    static String json(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"').toString();
    }

    /** One access line per request, on stdout (supervisord keeps it in the service's log). */
    private static void access(HttpExchange exchange, int status, int bytes) {
        String client = exchange.getRemoteAddress() == null ? "-" : exchange.getRemoteAddress().getAddress().getHostAddress();
        log(client + " \"" + exchange.getRequestMethod() + " " + exchange.getRequestURI() + " "
                + exchange.getProtocol() + "\" " + status + " " + bytes);
    }

    private static void log(String line) {
        System.out.println(OffsetDateTime.now(ZoneOffset.UTC).format(LOG_TIME) + " " + line);
    }
}
