package queue

import (
	"context"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// supervisor runs destination workers in Run's errgroup: the first error
// (a store write given up on) ends Run, and Run waits for every worker.
type supervisor struct {
	on    atomic.Bool // group is set: read on every enqueue, without the lock
	mu    sync.Mutex
	group *errgroup.Group
	ctx   context.Context
}

// run runs loop and the workers started meanwhile until ctx ends or one fails.
func (s *supervisor) run(ctx context.Context, loop func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	s.mu.Lock()
	s.group, s.ctx = g, gctx
	s.on.Store(true)
	s.mu.Unlock()
	g.Go(func() error { return loop(gctx) })
	// Workers are added to g (under s.mu) only while group is set, and this
	// goroutine, counted in g, clears it: so no Go call can race with Wait
	// once the count has dropped to zero.
	g.Go(func() error {
		<-gctx.Done()
		s.mu.Lock()
		s.group = nil
		s.on.Store(false)
		s.mu.Unlock()
		return nil
	})
	err := g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// running reports whether Run is running.
func (s *supervisor) running() bool { return s.on.Load() }

// start runs work in the errgroup with a context of its own, whose cancel is
// handed to keep before work starts; ErrNotRunning when Run is not running.
func (s *supervisor) start(keep func(context.CancelFunc), work func(context.Context) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.group == nil {
		return ErrNotRunning
	}
	ctx, cancel := context.WithCancel(s.ctx)
	keep(cancel)
	s.group.Go(func() error {
		defer cancel()
		return work(ctx)
	})
	return nil
}
