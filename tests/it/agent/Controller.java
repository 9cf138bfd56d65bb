// A stand-in for the Jenkins controller's side of CommandLauncher, for
// berth's tests only: starts the command as Jenkins does (ProcessBuilder, no
// shell), writes its preamble at once (before any container exists),
// negotiates like Channel.Mode.NEGOTIATE (waits for the agent's mode
// preamble and echoes it), then drives the agent with chunked frames.
// Usage: java Controller ACTION... -- COMMAND...; results go to stdout, one
// line each, the command's stderr is passed through.
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.*;

public class Controller {
    public static void main(String[] args) throws Exception {
        int sep = Arrays.asList(args).indexOf("--");
        List<String> actions = Arrays.asList(args).subList(0, sep);
        List<String> cmd = Arrays.asList(args).subList(sep + 1, args.length);
        long t0 = System.nanoTime();
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.redirectError(ProcessBuilder.Redirect.INHERIT);
        Process p = pb.start();
        OutputStream toAgent = new BufferedOutputStream(p.getOutputStream(), 1 << 16);
        InputStream fromAgent = new BufferedInputStream(p.getInputStream(), 1 << 16);
        toAgent.write(Agent.PREAMBLE);
        toAgent.write(Agent.CAPABILITY);
        toAgent.flush();
        ByteArrayOutputStream header = new ByteArrayOutputStream();
        try {
            Frames.await(fromAgent, Agent.PREAMBLE, header);
            Frames.readFully(fromAgent, Agent.CAPABILITY.length);
            Frames.await(fromAgent, new byte[] {0, 0, 0, 0}, null);
        } catch (IOException e) {
            System.out.println("no channel: " + e.getMessage());
            System.out.println("exit " + p.waitFor());
            return;
        }
        toAgent.write(new byte[] {0, 0, 0, 0});
        toAgent.flush();
        System.out.println("header " + Base64.getEncoder().encodeToString(header.toByteArray()));
        System.out.println("channel up " + (System.nanoTime() - t0) / 1_000_000 + " ms");
        Frames f = new Frames(fromAgent, toAgent);
        boolean done = false;
        for (String a : actions) {
            String arg = a.contains(":") ? a.substring(a.indexOf(':') + 1) : "";
            if (a.equals("version")) {
                f.send("V");
                System.out.println("version " + str(f.readMessage()).substring(1));
            } else if (a.startsWith("exec:")) {
                f.send("Xsh\0-c\0" + arg);
                String r = str(f.readMessage()).substring(1);
                int nl = r.indexOf('\n');
                System.out.println("exec " + r.substring(0, nl));
                for (String line : r.substring(nl + 1).split("\n")) System.out.println("| " + line);
            } else if (a.startsWith("echo:")) {
                echo(f, Integer.parseInt(arg) << 20);
            } else if (a.startsWith("jar:")) {
                f.send("J" + arg);
                System.out.println("jar " + str(f.readMessage()).substring(1));
            } else if (a.startsWith("jars:")) {
                String[] nk = arg.split(":");
                jars(f, Integer.parseInt(nk[0]), Integer.parseInt(nk[1]) << 10);
            } else if (a.startsWith("wait:")) {
                Thread.sleep(Long.parseLong(arg));
            } else if (a.equals("close")) {
                f.send("C");
                f.readMessage();
                long t = System.nanoTime();
                toAgent.close();
                System.out.println("exit " + p.waitFor() + " after " + (System.nanoTime() - t) / 1_000_000 + " ms");
                done = true;
            } else if (a.equals("eof")) {
                long t = System.nanoTime();
                toAgent.close();
                System.out.println("exit " + p.waitFor() + " after " + (System.nanoTime() - t) / 1_000_000 + " ms");
                done = true;
            } else if (a.equals("term")) {
                long t = System.nanoTime();
                ProcessHandle berth = p.toHandle().descendants()
                    .filter(h -> h.info().command().map(c -> c.endsWith("/berth")).orElse(false))
                    .findFirst().orElse(p.toHandle());
                berth.destroy();
                System.out.println("exit " + p.waitFor() + " after " + (System.nanoTime() - t) / 1_000_000 + " ms");
                done = true;
            }
            System.out.flush();
        }
        if (!done) {
            toAgent.close();
            System.out.println("exit " + p.waitFor());
        }
    }

    static String str(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    // What remoting's JarLoader does for n jars of `size` bytes: the agent
    // looks each checksum up in its jar cache, the controller sends a jar
    // only on a miss. Prints the hits, the jar bytes sent and the time.
    static void jars(Frames f, int n, int size) throws Exception {
        long t = System.nanoTime(), bytes = 0;
        int hits = 0;
        for (int i = 0; i < n; i++) {
            byte[] jar = new byte[size + 1];
            new Random(i).nextBytes(jar);
            jar[0] = 'P';
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            md.update(jar, 1, size);
            f.send("L" + Frames.hex(md.digest()));
            if (str(f.readMessage()).equals("Lhit")) {
                hits++;
                continue;
            }
            f.sendBytes(jar, 0, jar.length, false);
            bytes += size;
            f.readMessage();
        }
        System.out.println("jars " + n + " hits=" + hits + " bytes=" + bytes + " ms=" + (System.nanoTime() - t) / 1_000_000);
    }

    // n pseudo-random bytes to the agent and back at once.
    static void echo(Frames f, int n) throws Exception {
        byte[] msg = new byte[n + 1];
        new Random(42).nextBytes(msg);
        msg[0] = 'E';
        MessageDigest sent = MessageDigest.getInstance("SHA-256");
        sent.update(msg, 1, n);
        long t = System.nanoTime();
        Thread w = new Thread(() -> {
            try {
                f.sendBytes(msg, 0, msg.length, false);
            } catch (IOException e) {
                e.printStackTrace();
            }
        });
        w.start();
        byte[] back = f.readMessage();
        w.join();
        MessageDigest got = MessageDigest.getInstance("SHA-256");
        got.update(back, 1, back.length - 1);
        String agent = str(f.readMessage()).substring(1);
        long ms = (System.nanoTime() - t) / 1_000_000;
        System.out.println("echo " + (back.length - 1) + " sent=" + Frames.hex(sent.digest()) + " agent=" + agent
            + " back=" + Frames.hex(got.digest()) + " ms=" + ms);
    }
}
