package envelope

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Validator checks a payload's JSON text; a non-nil error says what is wrong with it.
type Validator func(payload []byte) error

// Schemas is a registry of known schema_ids and their payload validators. A nil *Schemas
// accepts every schema_id. Safe for concurrent use.
type Schemas struct {
	mu         sync.RWMutex
	validators map[string]Validator
}

// NewSchemas returns an empty registry.
func NewSchemas() *Schemas { return &Schemas{validators: map[string]Validator{}} }

// Register adds (or replaces) a schema; a nil validator accepts any payload object.
func (s *Schemas) Register(schemaID string, v Validator) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.validators[schemaID] = v
}

// Known lists the registered schema_ids, sorted.
func (s *Schemas) Known() []string {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Sorted(maps.Keys(s.validators))
}

// Validate checks that schemaID is known and its payload valid. Errors wrap ErrUnknownSchema
// or ErrInvalidPayload (and so ErrPoison).
func (s *Schemas) Validate(schemaID string, payload []byte) error {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	v, ok := s.validators[schemaID]
	s.mu.RUnlock()
	if !ok {
		return fmt.Errorf("%w %q (known: %s)", ErrUnknownSchema, schemaID, strings.Join(s.Known(), ", "))
	}
	if v == nil {
		return nil
	}
	if err := v(payload); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidPayload, schemaID, err)
	}
	return nil
}
