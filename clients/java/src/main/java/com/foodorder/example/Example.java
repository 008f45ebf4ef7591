package com.foodorder.example;

import com.foodorder.v1.ListMenuItemsRequest;
import com.foodorder.v1.MenuItem;
import com.foodorder.v1.Order;
import com.foodorder.v1.OrderItemInput;
import com.foodorder.v1.OrderServiceGrpc;
import com.foodorder.v1.OrderServiceGrpc.OrderServiceBlockingStub;
import com.foodorder.v1.OrderStatus;
import com.foodorder.v1.PlaceOrderRequest;
import com.foodorder.v1.WatchOrderRequest;
import com.foodorder.v1.WatchOrderResponse;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.MetadataUtils;
import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * Uses the foodorder.v1 contract from Java, with the code generated from proto/ at build time:
 *
 * <pre>
 *   mvn -q -f clients/java/pom.xml compile exec:java -Dexec.args=127.0.0.1:50051
 * </pre>
 *
 * <p>Lists the menu, places an order (with an x-request-id and an idempotency key), watches it
 * with WatchOrder until ORDER_STATUS_COMPLETED or ORDER_STATUS_FAILED (at most 60 s) printing
 * each status, then places an order the server must refuse (quantity 0) and prints the
 * google.rpc.BadRequest field violations of the refusal. Exits 1 with a one-line reason on the
 * first unexpected answer.
 */
public final class Example {
  private static final long CALL_SECONDS = 10;
  private static final long WATCH_SECONDS = 60; // the payment service finishes within seconds
  private static final int QUANTITY = 2;
  // Held here: java.util.logging keeps loggers only weakly, and would drop the level set on it.
  private static final Logger GRPC_LOGGER = Logger.getLogger("io.grpc");
  private static final Metadata.Key<String> REQUEST_ID =
      Metadata.Key.of("x-request-id", Metadata.ASCII_STRING_MARSHALLER);

  /** An unexpected answer: its message is the one line the example ends with. */
  private static final class Failure extends Exception {
    Failure(String message) {
      super(message);
    }
  }

  private Example() {}

  public static void main(String[] args) throws InterruptedException {
    if (args.length != 1) {
      System.err.println("usage: Example HOST:PORT   (mvn ... exec:java -Dexec.args=127.0.0.1:50051)");
      System.exit(2);
    }
    // A failed call is reported below in one line; gRPC would also log some (an unknown host,
    // for one) as warnings with a stack trace.
    GRPC_LOGGER.setLevel(Level.SEVERE);
    ManagedChannel channel = null;
    int exitCode = 0;
    try {
      // The channel connects lazily: an unreachable address shows up as UNAVAILABLE (or
      // DEADLINE_EXCEEDED) on the first call.
      channel = Grpc.newChannelBuilder(args[0], InsecureChannelCredentials.create()).build();
      run(OrderServiceGrpc.newBlockingStub(channel));
      System.out.println("java example: all expectations met");
    } catch (Failure failure) {
      System.err.println("error: " + oneLine(failure.getMessage()));
      exitCode = 1;
    } catch (IllegalArgumentException badAddress) {
      System.err.println("error: address " + args[0] + ": " + oneLine(badAddress.getMessage()));
      exitCode = 1;
    } finally {
      if (channel != null) {
        channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
      }
    }
    // exec:java runs main inside Maven's JVM: exit explicitly so that the code reaches the shell.
    if (exitCode != 0) {
      System.exit(exitCode);
    }
  }

  private static void run(OrderServiceBlockingStub stub) throws Failure {
    MenuItem item = pickMenuItem(stub);
    Order order = placeOrder(stub, item);
    watchOrder(stub, order.getId());
    placeInvalidOrder(stub, item);
  }

  /** The first available item of the menu. */
  private static MenuItem pickMenuItem(OrderServiceBlockingStub stub) throws Failure {
    List<MenuItem> menu;
    try {
      menu =
          stub.withDeadlineAfter(CALL_SECONDS, TimeUnit.SECONDS)
              .listMenuItems(ListMenuItemsRequest.getDefaultInstance())
              .getMenuItemsList();
    } catch (StatusRuntimeException error) {
      throw callFailure("ListMenuItems", error);
    }
    for (MenuItem item : menu) {
      if (item.getAvailable()) {
        System.out.printf(
            "menu: %d items; ordering %d x %s at %s%n",
            menu.size(), QUANTITY, item.getName(), item.getPrice());
        return item;
      }
    }
    throw new Failure(
        "ListMenuItems: none of the " + menu.size() + " menu items is available");
  }

  /** Places the order and checks what the server says about it. */
  private static Order placeOrder(OrderServiceBlockingStub stub, MenuItem item) throws Failure {
    String requestId = "java-example-" + UUID.randomUUID();
    Metadata sent = new Metadata();
    sent.put(REQUEST_ID, requestId);
    AtomicReference<Metadata> headers = new AtomicReference<>();
    AtomicReference<Metadata> trailers = new AtomicReference<>();
    PlaceOrderRequest request =
        PlaceOrderRequest.newBuilder()
            .setCustomerName("Grace Hopper")
            .setCustomerEmail("grace@example.com")
            .addItems(
                OrderItemInput.newBuilder().setMenuItemId(item.getId()).setQuantity(QUANTITY))
            // A retry with the same key returns this order instead of placing a second one.
            .setIdempotencyKey("java-example-" + UUID.randomUUID())
            .build();
    Order order;
    try {
      order =
          stub.withInterceptors(
                  MetadataUtils.newAttachHeadersInterceptor(sent),
                  MetadataUtils.newCaptureMetadataInterceptor(headers, trailers))
              .withDeadlineAfter(CALL_SECONDS, TimeUnit.SECONDS)
              .placeOrder(request)
              .getOrder();
    } catch (StatusRuntimeException error) {
      throw callFailure("PlaceOrder", error);
    }
    String echoed = headers.get() == null ? null : headers.get().get(REQUEST_ID);
    if (!requestId.equals(echoed)) {
      throw new Failure(
          "PlaceOrder: x-request-id " + requestId + " not echoed in the response headers (got "
              + echoed + ")");
    }
    if (!order.getCorrelationId().equals(requestId)) {
      throw new Failure(
          "PlaceOrder: correlation_id " + order.getCorrelationId() + ", expected the x-request-id "
              + requestId);
    }
    if (order.getStatus() != OrderStatus.ORDER_STATUS_PROCESSING) {
      throw new Failure(
          "PlaceOrder: new order has status " + order.getStatus()
              + ", expected ORDER_STATUS_PROCESSING");
    }
    // Money is an exact decimal string: compare as BigDecimal, never as double.
    BigDecimal expected = money(item.getPrice()).multiply(BigDecimal.valueOf(QUANTITY));
    if (money(order.getTotalAmount()).compareTo(expected) != 0) {
      throw new Failure(
          "PlaceOrder: total " + order.getTotalAmount() + ", expected " + QUANTITY + " x "
              + item.getPrice());
    }
    System.out.printf(
        "placed: %s total %s %s (x-request-id %s)%n",
        order.getId(), order.getTotalAmount(), order.getStatus(), requestId);
    return order;
  }

  /**
   * Prints every status the stream reports; the server ends the stream after a terminal status,
   * the deadline bounds the wait.
   */
  private static void watchOrder(OrderServiceBlockingStub stub, String orderId) throws Failure {
    long started = System.nanoTime();
    List<String> statuses = new ArrayList<>();
    OrderStatus last = OrderStatus.ORDER_STATUS_UNSPECIFIED;
    try {
      Iterator<WatchOrderResponse> stream =
          stub.withDeadlineAfter(WATCH_SECONDS, TimeUnit.SECONDS)
              .watchOrder(WatchOrderRequest.newBuilder().setOrderId(orderId).build());
      while (stream.hasNext()) {
        OrderStatus status = stream.next().getOrder().getStatus();
        if (terminal(last)) {
          throw new Failure("WatchOrder: " + status + " after the terminal status " + last);
        }
        last = status;
        statuses.add(status.name());
        System.out.println("status: " + status);
      }
    } catch (StatusRuntimeException error) {
      if (error.getStatus().getCode() == Status.Code.DEADLINE_EXCEEDED) {
        throw new Failure(
            "WatchOrder: no terminal status within " + WATCH_SECONDS + " s (saw "
                + seen(statuses) + ")");
      }
      throw new Failure(
          callFailure("WatchOrder", error).getMessage() + " (saw " + seen(statuses) + ")");
    }
    if (!terminal(last)) {
      throw new Failure(
          "WatchOrder: stream ended without a terminal status (saw " + seen(statuses) + ")");
    }
    System.out.printf(
        "watched: %s in %.1f s%n",
        String.join(" -> ", statuses), (System.nanoTime() - started) / 1e9);
  }

  /**
   * Sends quantity 0, which the server refuses with INVALID_ARGUMENT and a google.rpc.BadRequest
   * naming items[0].quantity.
   */
  private static void placeInvalidOrder(OrderServiceBlockingStub stub, MenuItem item)
      throws Failure {
    PlaceOrderRequest request =
        PlaceOrderRequest.newBuilder()
            .setCustomerName("Grace Hopper")
            .setCustomerEmail("grace@example.com")
            .addItems(OrderItemInput.newBuilder().setMenuItemId(item.getId()).setQuantity(0))
            .build();
    try {
      stub.withDeadlineAfter(CALL_SECONDS, TimeUnit.SECONDS).placeOrder(request);
      throw new Failure("PlaceOrder with quantity 0: accepted, expected INVALID_ARGUMENT");
    } catch (StatusRuntimeException error) {
      if (error.getStatus().getCode() != Status.Code.INVALID_ARGUMENT) {
        throw new Failure(
            "PlaceOrder with quantity 0: expected INVALID_ARGUMENT: "
                + callFailure("PlaceOrder", error).getMessage());
      }
      System.out.println(
          "refused: " + error.getStatus().getCode() + ": " + error.getStatus().getDescription());
      // The details travel in the grpc-status-details-bin trailer as a google.rpc.Status.
      com.google.rpc.Status details = StatusProto.fromThrowable(error);
      int violations = 0;
      if (details != null) {
        for (Any detail : details.getDetailsList()) {
          if (!detail.is(BadRequest.class)) {
            continue;
          }
          BadRequest badRequest;
          try {
            badRequest = detail.unpack(BadRequest.class);
          } catch (InvalidProtocolBufferException undecodable) {
            throw new Failure("PlaceOrder with quantity 0: undecodable google.rpc.BadRequest: "
                + undecodable.getMessage());
          }
          for (BadRequest.FieldViolation violation : badRequest.getFieldViolationsList()) {
            violations++;
            System.out.println(
                "field violation: " + violation.getField() + ": " + violation.getDescription());
          }
        }
      }
      if (violations == 0) {
        throw new Failure(
            "PlaceOrder with quantity 0: INVALID_ARGUMENT without google.rpc.BadRequest field"
                + " violations");
      }
    }
  }

  private static boolean terminal(OrderStatus status) {
    return status == OrderStatus.ORDER_STATUS_COMPLETED
        || status == OrderStatus.ORDER_STATUS_FAILED;
  }

  private static String seen(List<String> statuses) {
    return statuses.isEmpty() ? "no messages" : String.join(" -> ", statuses);
  }

  /** Names the method and the gRPC code of a failed call (and the transport's cause, if any). */
  private static Failure callFailure(String method, StatusRuntimeException error) {
    Status status = error.getStatus();
    StringBuilder message = new StringBuilder(method).append(": ").append(status.getCode());
    if (status.getDescription() != null) {
      message.append(": ").append(status.getDescription());
    }
    if (status.getCause() != null && status.getCause().getMessage() != null) {
      message.append(" (").append(status.getCause().getMessage()).append(")");
    }
    return new Failure(message.toString());
  }

  /** Parses an exact decimal money string with two fraction digits ("12.99"). */
  private static BigDecimal money(String amount) throws Failure {
    if (!amount.matches("[0-9]+\\.[0-9]{2}")) {
      throw new Failure("not a money string: \"" + amount + "\"");
    }
    return new BigDecimal(amount);
  }

  private static String oneLine(String message) {
    return String.valueOf(message).trim().replaceAll("\\s+", " ");
  }
}
