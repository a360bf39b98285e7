// Threads of our CPU kernels (thread_pool.cc).
#pragma once
#include <functional>

#include "oneapi/dnnl/dnnl_threadpool_iface.hpp"

// SSD_CONV_THREADS when set above 0 (src.device.prepare_process sets it from the config's
// conv_threads), else the machine's cores.
int KernelThreads();

// The pool of KernelThreads() threads that every kernel and oneDNN's primitives run on.
dnnl::threadpool_interop::threadpool_iface &KernelThreadPool();

// Runs fn(i, n) for every i < n on the pool and returns when all are done.
void KernelParallelFor(int n, const std::function<void(int, int)> &fn);
