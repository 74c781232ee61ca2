package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/segmentio/kafka-go"
)

// listOffsets is ListOffsets, asked again (three tries, 200 ms apart) while
// the broker answers a temporary error for the request or for any of its
// partitions: a broker that has just elected a partition's leader answers
// NOT_LEADER_FOR_PARTITION for a moment. A temporary error that outlasts the
// tries is an unavailable error: the API answers 503.
func (s *Server) listOffsets(ctx context.Context, req *kafka.ListOffsetsRequest) (*kafka.ListOffsetsResponse, error) {
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		var resp *kafka.ListOffsetsResponse
		resp, err = s.client.ListOffsets(ctx, req)
		if err == nil {
			err = partitionError(resp)
		}
		if err == nil || !temporary(err) {
			return resp, err
		}
	}
	return nil, &apiError{status: 503, errcode: "M_UNKNOWN", msg: fmt.Sprintf("Kafka is not ready, try again: %v", err)}
}

// partitionError is the first partition error of resp.
func partitionError(resp *kafka.ListOffsetsResponse) error {
	for topic, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return fmt.Errorf("listing the offsets of %s/%d: %w", topic, p.Partition, p.Error)
			}
		}
	}
	return nil
}

// temporary reports whether err may go away if the request is made again.
func temporary(err error) bool {
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Temporary()
	}
	var ne net.Error
	return errors.As(err, &ne)
}
