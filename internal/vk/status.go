package vk

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/banger-dev/banger/internal/api"
)

// observed is what banger-vk knows of a Pod's VM at one moment.
type observed struct {
	vm        *api.VM // nil: no VM (yet)
	createErr string  // the VM could not be made; final
	hasCmd    bool    // the Pod runs a command (a guest job)
	job       string  // the guest job's id, once started
	jobErr    string  // the command could not be started; final
	jobExit   *int    // the command's exit status, once it ended
}

// podStatus is the Pod's status from what banger-vk observed. Every time in
// it comes from the VM's own record, so an unchanged VM gives an unchanged
// status (no churn in the API server).
func podStatus(pod *corev1.Pod, o observed, hostIP string) corev1.PodStatus {
	st := corev1.PodStatus{Phase: corev1.PodPending, HostIP: hostIP, QOSClass: pod.Status.QOSClass}
	if hostIP != "" {
		st.HostIPs = []corev1.HostIP{{IP: hostIP}}
	}
	c := pod.Spec.Containers[0]
	cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "banger://" + c.Image}
	var started metav1.Time
	if o.vm != nil {
		cs.ContainerID = "banger://" + o.vm.ID
		started = parseTime(o.vm.Runtime.StartedAt, o.vm.CreatedAt)
		st.StartTime = &started
		if o.vm.IP != "" {
			st.PodIP = o.vm.IP
			st.PodIPs = []corev1.PodIP{{IP: o.vm.IP}}
		}
	}
	ready := false
	switch {
	case o.createErr != "":
		st.Phase, st.Reason, st.Message = corev1.PodFailed, "VMCreateFailed", o.createErr
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 128, Reason: "VMCreateFailed", Message: o.createErr}
	case o.vm == nil:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CreatingVM"}
	case o.jobErr != "":
		st.Phase, st.Reason, st.Message = corev1.PodFailed, "CommandFailed", o.jobErr
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 128, Reason: "CommandFailed", Message: o.jobErr, StartedAt: started, FinishedAt: started}
	case o.jobExit != nil:
		st.Phase = corev1.PodSucceeded
		reason := "Completed"
		if *o.jobExit != 0 {
			st.Phase, reason = corev1.PodFailed, "Error"
		}
		finished := parseTime(o.vm.UpdatedAt, o.vm.CreatedAt)
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: int32(*o.jobExit), Reason: reason, StartedAt: started, FinishedAt: finished}
	default:
		ready = vmStatus(o, &st, &cs, started)
	}
	cs.Ready = ready
	t := true
	cs.Started = &t
	if cs.State.Waiting != nil {
		f := false
		cs.Started = &f
	}
	st.ContainerStatuses = []corev1.ContainerStatus{cs}
	st.Conditions = conditions(st, ready, started)
	return st
}

// vmStatus fills the status of a Pod whose VM exists and whose command (if
// any) has not ended, reporting whether the Pod is ready.
func vmStatus(o observed, st *corev1.PodStatus, cs *corev1.ContainerStatus, started metav1.Time) bool {
	switch o.vm.State {
	case api.StateCreated, api.StateStarting:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "BootingVM"}
	case api.StateRunning:
		if o.hasCmd && o.job == "" {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "StartingCommand"}
			return false
		}
		st.Phase = corev1.PodRunning
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: started}
		return true
	case api.StatePaused, api.StateParked:
		// Still the Pod's VM, its memory kept; an exec wakes it.
		st.Phase = corev1.PodRunning
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: started}
		st.Reason, st.Message = "VMParked", fmt.Sprintf("VM %s is %s; an exec wakes it", o.vm.Name, o.vm.State)
	default: // stopped, stopping, error: banger does not restart it behind the owner's back
		st.Phase, st.Reason = corev1.PodFailed, "VMStopped"
		st.Message = fmt.Sprintf("VM %s is %s", o.vm.Name, o.vm.State)
		if o.vm.Runtime.StopReason != "" {
			st.Message += ": " + o.vm.Runtime.StopReason
		}
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "VMStopped", Message: st.Message,
			StartedAt: started, FinishedAt: parseTime(o.vm.Runtime.StoppedAt, o.vm.UpdatedAt)}
	}
	return false
}

func conditions(st corev1.PodStatus, ready bool, at metav1.Time) []corev1.PodCondition {
	b := func(v bool) corev1.ConditionStatus {
		if v {
			return corev1.ConditionTrue
		}
		return corev1.ConditionFalse
	}
	return []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: at},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: at},
		{Type: corev1.ContainersReady, Status: b(ready), LastTransitionTime: at},
		{Type: corev1.PodReady, Status: b(ready), LastTransitionTime: at},
	}
}

// parseTime reads the daemon's RFC 3339 times, the first that parses.
func parseTime(vals ...string) metav1.Time {
	for _, v := range vals {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return metav1.NewTime(t.Truncate(time.Second))
		}
	}
	return metav1.Time{}
}
