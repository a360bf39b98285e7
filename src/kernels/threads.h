// Threads of our CPU kernels: SSD_CONV_THREADS, else the machine's cores.
#pragma once
#include <cstdlib>
#include <functional>
#include <thread>

inline int KernelThreads() {
  const char *env = std::getenv("SSD_CONV_THREADS");
  const int wanted = env ? std::atoi(env) : 0;
  if (wanted > 0) return wanted;
  const unsigned cores = std::thread::hardware_concurrency();
  return cores ? static_cast<int>(cores) : 1;
}

// Runs fn(i, n) for every i < n on the kernels' shared pool of KernelThreads() threads (the one
// oneDNN runs on; defined in onednn_conv.cc) and returns when all are done.
void KernelParallelFor(int n, const std::function<void(int, int)> &fn);
