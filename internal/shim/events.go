package shim

import (
	"context"
	"sync"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/log"
)

// eventBuffer is how many events wait for the publisher before a sender
// blocks.
const eventBuffer = 128

// event is one task event with its topic.
type event struct {
	topic string
	ev    events.Event
}

// eventQueue publishes the task events to containerd one at a time, in the
// order they were sent: a TaskExit never overtakes its TaskStart.
type eventQueue struct {
	ch chan event

	mu sync.Mutex
	// closed is guarded by mu; once set, send drops events.
	closed bool
}

// newEventQueue starts forwarding to publisher. ctx is the shim's
// process-lifetime context (it carries the namespace). The publisher is
// closed once the queue is closed and drained.
func newEventQueue(ctx context.Context, publisher interface {
	events.Publisher
	Close() error
}) *eventQueue {
	q := &eventQueue{ch: make(chan event, eventBuffer)}
	// The shim's context ends when it shuts down, but the events queued
	// before (the last TaskDelete) must still reach containerd: publish
	// with its values and without its end.
	pctx := context.WithoutCancel(ctx)
	go func() {
		for e := range q.ch {
			if err := publisher.Publish(pctx, e.topic, e.ev); err != nil {
				log.G(ctx).WithError(err).WithField("topic", e.topic).Error("publishing event")
			}
		}
		if err := publisher.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("closing the event publisher")
		}
	}()
	return q
}

func (q *eventQueue) send(topic string, ev events.Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.ch <- event{topic: topic, ev: ev}
}

// close stops the queue after the events already sent.
func (q *eventQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
}

// topic returns the topic of a task event.
func topic(ev events.Event) string {
	switch ev.(type) {
	case *eventstypes.TaskCreate:
		return runtime.TaskCreateEventTopic
	case *eventstypes.TaskStart:
		return runtime.TaskStartEventTopic
	case *eventstypes.TaskOOM:
		return runtime.TaskOOMEventTopic
	case *eventstypes.TaskExit:
		return runtime.TaskExitEventTopic
	case *eventstypes.TaskDelete:
		return runtime.TaskDeleteEventTopic
	case *eventstypes.TaskExecAdded:
		return runtime.TaskExecAddedEventTopic
	case *eventstypes.TaskExecStarted:
		return runtime.TaskExecStartedEventTopic
	case *eventstypes.TaskPaused:
		return runtime.TaskPausedEventTopic
	case *eventstypes.TaskResumed:
		return runtime.TaskResumedEventTopic
	}
	return runtime.TaskUnknownTopic
}

// publish queues a task event.
func (q *eventQueue) publish(ev events.Event) { q.send(topic(ev), ev) }
