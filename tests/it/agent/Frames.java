// Framing shared by the stand-in agent and controller: preamble scanning
// (bytes before it are junk, handed to a header stream) and remoting's
// chunked frames (2-byte header: bit 15 "more follows", 15-bit length).
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;

public class Frames {
    final InputStream in;
    final OutputStream out;

    Frames(InputStream in, OutputStream out) {
        this.in = in;
        this.out = out;
    }

    // Reads until `pattern` has been seen; what came before goes to `header`.
    static void await(InputStream in, byte[] pattern, OutputStream header) throws IOException {
        ByteArrayOutputStream seen = new ByteArrayOutputStream();
        int matched = 0;
        while (matched < pattern.length) {
            int c = in.read();
            if (c < 0) throw new EOFException("before the preamble");
            seen.write(c);
            if (c == (pattern[matched] & 0xff)) {
                matched++;
            } else {
                matched = c == (pattern[0] & 0xff) ? 1 : 0;
            }
        }
        if (header != null) {
            byte[] all = seen.toByteArray();
            header.write(all, 0, all.length - pattern.length);
        }
    }

    static byte[] readFully(InputStream in, int n) throws IOException {
        byte[] b = in.readNBytes(n);
        if (b.length < n) throw new EOFException();
        return b;
    }

    int readHeader() throws IOException {
        int a = in.read(), b = in.read();
        if (a < 0 || b < 0) throw new EOFException();
        return (a << 8) | b;
    }

    byte[] readMessage() throws IOException {
        ByteArrayOutputStream m = new ByteArrayOutputStream();
        while (true) {
            int h = readHeader();
            m.write(readFully(in, h & 0x7fff));
            if ((h & 0x8000) == 0) return m.toByteArray();
        }
    }

    synchronized void sendBytes(byte[] msg, int off, int len, boolean more) throws IOException {
        do {
            int n = Math.min(len, 0x7fff);
            boolean last = n == len && !more;
            out.write((n >> 8) | (last ? 0 : 0x80));
            out.write(n & 0xff);
            out.write(msg, off, n);
            off += n;
            len -= n;
        } while (len > 0);
        out.flush();
    }

    void send(String s) throws IOException {
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        sendBytes(b, 0, b.length, false);
    }

    // The rest of an 'E' message, whose first frame is `first` (without the
    // 'E'), streamed back as it arrives, then "H" + its sha256.
    void echoRest(byte[] whole) throws Exception {
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        md.update(whole, 1, whole.length - 1);
        sendBytes(whole, 0, whole.length, false);
        send("H" + hex(md.digest()));
    }

    static String hex(byte[] d) {
        StringBuilder s = new StringBuilder();
        for (byte x : d) s.append(String.format("%02x", x));
        return s.toString();
    }
}
