package org.apache.spark.shuffle.netspark;

import java.io.Closeable;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.Map;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * One connection to the executor's netspark server over its local UNIX socket: the same
 * HMAC handshake as every peer ({@code netspark/transport/auth.py}, frames of
 * {@code netspark/transport/protocol.py}), then length-prefixed JSON requests and replies
 * ({@code netspark/server/local_api.py}). One request at a time; callers take turns.
 */
final class ServerConnection implements Closeable {
  private static final byte[] MAGIC = "NSPK".getBytes(StandardCharsets.US_ASCII);
  private static final int VERSION = 2;
  private static final int HELLO = 1, CHALLENGE = 2, AUTH = 3, AUTH_OK = 4, ERROR = 10;
  private static final int NONCE = 32;
  private static final byte[] SERVER_LABEL = label("netspark/1 server proof");
  private static final byte[] CLIENT_LABEL = label("netspark/1 client proof");
  private static final int MAX_REPLY = 64 << 20;
  static final ObjectMapper JSON = new ObjectMapper();

  private final SocketChannel channel;

  /** The server answered, and said no: the connection stays usable. */
  static final class Refused extends IOException {
    Refused(String message) {
      super(message);
    }
  }

  ServerConnection(String path, byte[] secret, String appId) throws IOException {
    channel = SocketChannel.open(StandardProtocolFamily.UNIX);
    try {
      channel.connect(UnixDomainSocketAddress.of(path));
      handshake(secret, appId);
    } catch (IOException | RuntimeException e) {
      channel.close();
      throw e;
    }
  }

  private static byte[] label(String text) {
    byte[] chars = text.getBytes(StandardCharsets.US_ASCII);
    byte[] out = new byte[chars.length + 1]; // NUL-terminated, as in auth.py
    System.arraycopy(chars, 0, out, 0, chars.length);
    return out;
  }

  private void handshake(byte[] secret, String appId) throws IOException {
    byte[] app = appId.getBytes(StandardCharsets.UTF_8);
    byte[] nonce = new byte[NONCE];
    new SecureRandom().nextBytes(nonce);
    ByteBuffer hello = ByteBuffer.allocate(2 + app.length + NONCE + 2).order(ByteOrder.LITTLE_ENDIAN);
    hello.putShort((short) app.length).put(app).put(nonce).put((byte) 0).put((byte) 0); // no RDMA
    byte[] helloPayload = hello.array();
    sendFrame(HELLO, helloPayload);
    byte[] challenge = receiveFrame(CHALLENGE, 2 * NONCE);
    byte[] serverNonce = java.util.Arrays.copyOfRange(challenge, 0, NONCE);
    byte[] serverProof = java.util.Arrays.copyOfRange(challenge, NONCE, 2 * NONCE);
    if (!MessageDigest.isEqual(serverProof, proof(secret, SERVER_LABEL, helloPayload, serverNonce))) {
      throw new IOException("the netspark server could not prove it holds the shared secret");
    }
    sendFrame(AUTH, proof(secret, CLIENT_LABEL, helloPayload, serverNonce));
    receiveFrame(AUTH_OK, 1);
  }

  private static byte[] proof(byte[] secret, byte[] label, byte[] hello, byte[] serverNonce) {
    try {
      Mac mac = Mac.getInstance("HmacSHA256");
      mac.init(new SecretKeySpec(secret, "HmacSHA256"));
      mac.update(label);
      mac.update(hello);
      return mac.doFinal(serverNonce);
    } catch (GeneralSecurityException e) {
      throw new IllegalStateException("HmacSHA256 is not available", e);
    }
  }

  private void sendFrame(int type, byte[] payload) throws IOException {
    ByteBuffer frame = ByteBuffer.allocate(12 + payload.length).order(ByteOrder.LITTLE_ENDIAN);
    frame.put(MAGIC).put((byte) VERSION).put((byte) type).putShort((short) 0).putInt(payload.length);
    frame.put(payload).flip();
    writeFully(frame);
  }

  private byte[] receiveFrame(int expectedType, int expectedLength) throws IOException {
    ByteBuffer header = readFully(12);
    byte[] magic = new byte[4];
    header.get(magic);
    int version = header.get() & 0xff;
    int type = header.get() & 0xff;
    header.getShort();
    int length = header.getInt();
    if (!java.util.Arrays.equals(magic, MAGIC) || version != VERSION || length < 0 || length > 4096) {
      throw new IOException("the netspark server sent a malformed handshake frame");
    }
    byte[] payload = readFully(length).array();
    if (type == ERROR) {
      throw new IOException("the netspark server refused the handshake (wrong secret or app id?)");
    }
    if (type != expectedType || length != expectedLength) {
      throw new IOException("the netspark server sent message type " + type + " during the handshake");
    }
    return payload;
  }

  private void writeFully(ByteBuffer buffer) throws IOException {
    while (buffer.hasRemaining()) {
      channel.write(buffer);
    }
  }

  private ByteBuffer readFully(int length) throws IOException {
    ByteBuffer buffer = ByteBuffer.allocate(length).order(ByteOrder.LITTLE_ENDIAN);
    while (buffer.hasRemaining()) {
      if (channel.read(buffer) < 0) {
        throw new IOException("the netspark server closed the connection");
      }
    }
    buffer.flip();
    return buffer;
  }

  /** One request; the reply, or an IOException carrying the server's refusal. */
  JsonNode call(String op, Map<String, Object> args) throws IOException {
    java.util.LinkedHashMap<String, Object> request = new java.util.LinkedHashMap<>(args);
    request.put("op", op);
    byte[] body = JSON.writeValueAsBytes(request);
    ByteBuffer frame = ByteBuffer.allocate(4 + body.length).order(ByteOrder.LITTLE_ENDIAN);
    frame.putInt(body.length).put(body).flip();
    writeFully(frame);
    int length = readFully(4).getInt();
    if (length < 0 || length > MAX_REPLY) {
      throw new IOException("the netspark server sent a reply of " + length + " bytes");
    }
    JsonNode reply = JSON.readTree(readFully(length).array());
    if (!reply.path("ok").asBoolean(false)) {
      throw new Refused("the netspark server refused " + op + ": " + reply.path("error").asText());
    }
    return reply;
  }

  @Override
  public void close() throws IOException {
    channel.close();
  }
}
