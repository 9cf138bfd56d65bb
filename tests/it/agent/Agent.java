// A stand-in for Jenkins' agent.jar in stdio mode, for berth's tests only.
// It keeps the real agent's stdio contract byte for byte: at start, without
// reading, the capability preamble and a base64 capability, then BINARY
// mode's four zero bytes; then chunked frames (2-byte header: bit 15 "more",
// 15-bit length). It runs processes through ProcessBuilder as a `sh` step
// would, writes jars into the jar cache as remoting does (temp + rename),
// and exits 0 on an orderly close or on stdin EOF after the handshake.
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.MessageDigest;
import java.util.*;

public class Agent {
    static final byte[] PREAMBLE = "<===[JENKINS REMOTING CAPACITY]===>".getBytes(StandardCharsets.UTF_8);
    static final byte[] CAPABILITY = Base64.getEncoder().encode(new byte[] {0, 0, 0, 0, 0, 0, 0x1f, (byte) 0xfe});
    static String workDir = ".", jarCache = null;

    public static void main(String[] args) throws Exception {
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals("-workDir")) workDir = args[++i];
            else if (args[i].equals("-jar-cache")) jarCache = args[++i];
        }
        if (jarCache != null) Files.createDirectories(Paths.get(jarCache));
        InputStream in = new BufferedInputStream(new FileInputStream(FileDescriptor.in), 1 << 16);
        OutputStream out = new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16);
        System.setOut(System.err);
        String junk = System.getenv("STANDIN_JUNK");
        if (junk != null) out.write(junk.getBytes(StandardCharsets.UTF_8));
        out.write(PREAMBLE);
        out.write(CAPABILITY);
        out.write(new byte[] {0, 0, 0, 0});
        out.flush();
        try {
            Frames.await(in, PREAMBLE, null);
            Frames.readFully(in, CAPABILITY.length);
            Frames.await(in, new byte[] {0, 0, 0, 0}, null);
        } catch (EOFException e) {
            System.err.println("EOF before the handshake");
            System.exit(1);
        }
        System.err.println("channel started");
        Frames f = new Frames(in, out);
        while (true) {
            byte[] msg;
            try {
                msg = f.readMessage();
            } catch (EOFException e) {
                System.err.println("channel stopped: EOF");
                System.exit(0);
                return;
            }
            char cmd = (char) msg[0];
            String arg = new String(msg, 1, msg.length - 1, StandardCharsets.UTF_8);
            switch (cmd) {
                case 'V':
                    f.send("V" + System.getProperty("java.version") + " " + System.getProperty("java.home"));
                    break;
                case 'X': {
                    ProcessBuilder pb = new ProcessBuilder(arg.split("\0"));
                    pb.directory(new File(workDir));
                    pb.redirectErrorStream(true);
                    String reply;
                    try {
                        Process p = pb.start();
                        p.getOutputStream().close();
                        byte[] o = p.getInputStream().readAllBytes();
                        reply = "X" + p.waitFor() + "\n" + new String(o, StandardCharsets.UTF_8);
                    } catch (IOException e) {
                        reply = "X-1\n" + e.getMessage();
                    }
                    f.send(reply);
                    break;
                }
                case 'E':
                    f.echoRest(msg);
                    break;
                case 'J':
                    f.send("J" + storeJar(arg.getBytes(StandardCharsets.UTF_8)));
                    break;
                case 'L': {
                    // Like remoting's JarLoader: is the jar of this SHA-256 cached?
                    Path p = cachePath(hexBytes(arg));
                    boolean hit = Files.exists(p);
                    if (hit) Files.setLastModifiedTime(p, java.nio.file.attribute.FileTime.fromMillis(System.currentTimeMillis()));
                    f.send(hit ? "Lhit" : "Lmiss");
                    break;
                }
                case 'P':
                    f.send("P" + storeJar(Arrays.copyOfRange(msg, 1, msg.length)));
                    break;
                case 'C':
                    f.send("C");
                    System.err.println("channel stopped: closed");
                    System.exit(0);
                    return;
                default:
                    f.send("?" + cmd);
            }
        }
    }

    // Stores a jar of the given content as remoting's FileSystemJarCache
    // names it (SHA-256 folded into two longs): "hit" when already there.
    static Path cachePath(byte[] sha256) {
        java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(sha256);
        long l0 = b.getLong(), l1 = b.getLong(), l2 = b.getLong(), l3 = b.getLong();
        long sum1 = l0 ^ l2, sum2 = l1 ^ l3;
        return Paths.get(jarCache, String.format("%02X/%014X%016X.jar", (int) (sum1 >>> 56), sum1 & 0x00FFFFFFFFFFFFFFL, sum2));
    }

    static byte[] hexBytes(String hex) {
        byte[] out = new byte[hex.length() / 2];
        for (int i = 0; i < out.length; i++) out[i] = (byte) Integer.parseInt(hex.substring(2 * i, 2 * i + 2), 16);
        return out;
    }

    static String storeJar(byte[] data) throws Exception {
        Path p = cachePath(MessageDigest.getInstance("SHA-256").digest(data));
        if (Files.exists(p) && Arrays.equals(Files.readAllBytes(p), data)) {
            Files.setLastModifiedTime(p, java.nio.file.attribute.FileTime.fromMillis(System.currentTimeMillis()));
            return "hit " + p;
        }
        Files.createDirectories(p.getParent());
        Path tmp = Files.createTempFile(p.getParent(), "tmp", "jar");
        Files.write(tmp, data);
        Files.move(tmp, p, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        return "miss " + p;
    }
}
