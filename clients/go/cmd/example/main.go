// Command example uses the foodorder.v1 contract from Go, with the code
// generated from proto/ (run ./generate first, see ../../README.md):
//
//	go run ./cmd/example -addr 127.0.0.1:50051
//
// It lists the menu, places an order (with an x-request-id and an idempotency
// key), watches it with WatchOrder until ORDER_STATUS_COMPLETED or
// ORDER_STATUS_FAILED (at most 60 s) printing each status, then places an
// order the server must refuse (quantity 0) and prints the google.rpc.BadRequest
// field violations of the refusal. Exits 1 with a one-line reason on the first
// unexpected answer.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	foodorderv1 "github.com/foodorder/platform/clients/go/gen/foodorder/v1"
)

const (
	callTimeout  = 10 * time.Second
	watchTimeout = 60 * time.Second // the payment service finishes within seconds
	quantity     = 2
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "host:port of the order API (plaintext gRPC)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: example [-addr HOST:PORT]")
		os.Exit(2)
	}
	if err := run(*addr); err != nil {
		fmt.Fprintf(os.Stderr, "error: %s\n", oneLine(err.Error()))
		os.Exit(1)
	}
	fmt.Println("go example: all expectations met")
}

func run(addr string) error {
	// NewClient does not connect: an unreachable address shows up as
	// UNAVAILABLE (or DEADLINE_EXCEEDED) on the first call.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	defer conn.Close()
	client := foodorderv1.NewOrderServiceClient(conn)

	item, err := pickMenuItem(client)
	if err != nil {
		return err
	}
	order, err := placeOrder(client, item)
	if err != nil {
		return err
	}
	if err := watchOrder(client, order.GetId()); err != nil {
		return err
	}
	return placeInvalidOrder(client, item)
}

// pickMenuItem returns the first available item of the menu.
func pickMenuItem(client foodorderv1.OrderServiceClient) (*foodorderv1.MenuItem, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	menu, err := client.ListMenuItems(ctx, &foodorderv1.ListMenuItemsRequest{})
	if err != nil {
		return nil, callError("ListMenuItems", err)
	}
	for _, item := range menu.GetMenuItems() {
		if item.GetAvailable() {
			fmt.Printf("menu: %d items; ordering %d x %s at %s\n",
				len(menu.GetMenuItems()), quantity, item.GetName(), item.GetPrice())
			return item, nil
		}
	}
	return nil, fmt.Errorf("ListMenuItems: none of the %d menu items is available", len(menu.GetMenuItems()))
}

// placeOrder places the order and checks what the server says about it.
func placeOrder(client foodorderv1.OrderServiceClient, item *foodorderv1.MenuItem) (*foodorderv1.Order, error) {
	requestID := "go-example-" + rand.Text()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", requestID)
	var header metadata.MD
	response, err := client.PlaceOrder(ctx, &foodorderv1.PlaceOrderRequest{
		CustomerName:  "Grace Hopper",
		CustomerEmail: "grace@example.com",
		Items:         []*foodorderv1.OrderItemInput{{MenuItemId: item.GetId(), Quantity: quantity}},
		// A retry with the same key returns this order instead of placing a second one.
		IdempotencyKey: "go-example-" + rand.Text(),
	}, grpc.Header(&header))
	if err != nil {
		return nil, callError("PlaceOrder", err)
	}
	order := response.GetOrder()
	if echoed := header.Get("x-request-id"); len(echoed) != 1 || echoed[0] != requestID {
		return nil, fmt.Errorf("PlaceOrder: x-request-id %s not echoed in the response headers (got %q)", requestID, echoed)
	}
	if order.GetCorrelationId() != requestID {
		return nil, fmt.Errorf("PlaceOrder: correlation_id %q, expected the x-request-id %q", order.GetCorrelationId(), requestID)
	}
	if order.GetStatus() != foodorderv1.OrderStatus_ORDER_STATUS_PROCESSING {
		return nil, fmt.Errorf("PlaceOrder: new order has status %s, expected ORDER_STATUS_PROCESSING", order.GetStatus())
	}
	// Money is an exact decimal string: compare in cents, never in floating point.
	price, err := cents(item.GetPrice())
	if err != nil {
		return nil, fmt.Errorf("ListMenuItems: price of %s: %w", item.GetName(), err)
	}
	total, err := cents(order.GetTotalAmount())
	if err != nil {
		return nil, fmt.Errorf("PlaceOrder: total_amount: %w", err)
	}
	if total != quantity*price {
		return nil, fmt.Errorf("PlaceOrder: total %s, expected %d x %s", order.GetTotalAmount(), quantity, item.GetPrice())
	}
	fmt.Printf("placed: %s total %s %s (x-request-id %s)\n", order.GetId(), order.GetTotalAmount(), order.GetStatus(), requestID)
	return order, nil
}

// watchOrder prints every status the stream reports; the server ends the
// stream after a terminal status, the deadline bounds the wait.
func watchOrder(client foodorderv1.OrderServiceClient, orderID string) error {
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), watchTimeout)
	defer cancel()
	stream, err := client.WatchOrder(ctx, &foodorderv1.WatchOrderRequest{OrderId: orderID})
	if err != nil {
		return callError("WatchOrder", err)
	}
	var statuses []string
	var last foodorderv1.OrderStatus
	for {
		message, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if status.Code(err) == codes.DeadlineExceeded {
				return fmt.Errorf("WatchOrder: no terminal status within %s (saw %s)", watchTimeout, seen(statuses))
			}
			return fmt.Errorf("%w (saw %s)", callError("WatchOrder", err), seen(statuses))
		}
		if terminal(last) {
			return fmt.Errorf("WatchOrder: %s after the terminal status %s", message.GetOrder().GetStatus(), last)
		}
		last = message.GetOrder().GetStatus()
		statuses = append(statuses, last.String())
		fmt.Printf("status: %s\n", last)
	}
	if !terminal(last) {
		return fmt.Errorf("WatchOrder: stream ended without a terminal status (saw %s)", seen(statuses))
	}
	fmt.Printf("watched: %s in %.1f s\n", strings.Join(statuses, " -> "), time.Since(started).Seconds())
	return nil
}

// placeInvalidOrder sends quantity 0, which the server refuses with
// INVALID_ARGUMENT and a google.rpc.BadRequest naming items[0].quantity.
func placeInvalidOrder(client foodorderv1.OrderServiceClient, item *foodorderv1.MenuItem) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	_, err := client.PlaceOrder(ctx, &foodorderv1.PlaceOrderRequest{
		CustomerName:  "Grace Hopper",
		CustomerEmail: "grace@example.com",
		Items:         []*foodorderv1.OrderItemInput{{MenuItemId: item.GetId(), Quantity: 0}},
	})
	if err == nil {
		return errors.New("PlaceOrder with quantity 0: accepted, expected INVALID_ARGUMENT")
	}
	refusal, ok := status.FromError(err)
	if !ok || refusal.Code() != codes.InvalidArgument {
		return fmt.Errorf("PlaceOrder with quantity 0: expected INVALID_ARGUMENT: %w", callError("PlaceOrder", err))
	}
	fmt.Printf("refused: %s: %s\n", refusal.Code(), refusal.Message())
	violations := 0
	for _, detail := range refusal.Details() {
		// Details() returns an error value for a detail whose type is not linked in.
		badRequest, ok := detail.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, violation := range badRequest.GetFieldViolations() {
			violations++
			fmt.Printf("field violation: %s: %s\n", violation.GetField(), violation.GetDescription())
		}
	}
	if violations == 0 {
		return errors.New("PlaceOrder with quantity 0: INVALID_ARGUMENT without google.rpc.BadRequest field violations")
	}
	return nil
}

func terminal(s foodorderv1.OrderStatus) bool {
	return s == foodorderv1.OrderStatus_ORDER_STATUS_COMPLETED || s == foodorderv1.OrderStatus_ORDER_STATUS_FAILED
}

func seen(statuses []string) string {
	if len(statuses) == 0 {
		return "no messages"
	}
	return strings.Join(statuses, " -> ")
}

// callError names the method and the gRPC code of a failed call.
func callError(method string, err error) error {
	if s, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s: %s", method, s.Code(), s.Message())
	}
	return fmt.Errorf("%s: %w", method, err)
}

// money is an exact decimal string with two fraction digits ("12.99").
var money = regexp.MustCompile(`^([0-9]+)\.([0-9]{2})$`)

// cents parses a money string.
func cents(amount string) (int64, error) {
	parts := money.FindStringSubmatch(amount)
	if parts == nil {
		return 0, fmt.Errorf("not a money string: %q", amount)
	}
	units, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a money string: %q", amount)
	}
	fraction, _ := strconv.ParseInt(parts[2], 10, 64)
	return units*100 + fraction, nil
}

// oneLine keeps an error message on one line.
func oneLine(message string) string {
	return strings.Join(strings.Fields(message), " ")
}
