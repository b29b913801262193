package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// stopFunc releases one started component. It must return promptly once ctx is done.
type stopFunc func(ctx context.Context) error

// stack is the teardown list of a starting or running App: components are pushed as they
// start and stopped last-in first-out. Safe for concurrent use.
type stack struct {
	mu      sync.Mutex
	entries []stackEntry
}

type stackEntry struct {
	name string
	stop stopFunc
}

// push records that name started and how to stop it.
func (s *stack) push(name string, stop stopFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = append(s.entries, stackEntry{name: name, stop: stop})
}

// unwind stops every recorded component in reverse order of starting, each at most once,
// and joins their errors. Every component is given the chance to stop even when ctx is
// already done (its stop must then return promptly), so nothing is leaked by a short
// deadline.
func (s *stack) unwind(ctx context.Context) error {
	s.mu.Lock()
	entries := s.entries
	s.entries = nil
	s.mu.Unlock()
	var errs []error
	for i := len(entries) - 1; i >= 0; i-- {
		if err := entries[i].stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("app: stop %s: %w", entries[i].name, err))
		}
	}
	return errors.Join(errs...)
}
