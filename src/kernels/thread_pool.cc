// The kernels' thread pool: a fixed set of worker threads, shared by every kernel of the
// library and by oneDNN (its threadpool runtime), sized once from SSD_CONV_THREADS, which
// src.device.prepare_process sets from the config's conv_threads (0: the machine's cores).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "threads.h"

namespace {

// A fixed set of worker threads; parallel_for runs fn(i, n) for i < n and returns when done.
class ThreadPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int t = 1; t < threads_; ++t) workers_.emplace_back([this] { Work(); });
  }
  ~ThreadPool() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quit_ = true;
      ++generation_;
    }
    wake_.notify_all();
    for (auto &worker : workers_) worker.join();
  }
  int get_num_threads() const override { return threads_; }
  bool get_in_parallel() const override { return in_parallel_; }
  uint64_t get_flags() const override { return 0; }

  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    if (n <= 0) return;
    if (n == 1 || threads_ == 1 || in_parallel_) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    std::unique_lock<std::mutex> call(call_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &fn;
      total_ = n;
      next_.store(0);
      running_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    in_parallel_ = true;
    Drain();
    in_parallel_ = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return running_ == 0; });
    task_ = nullptr;
  }

 private:
  void Drain() {
    for (int i = next_.fetch_add(1); i < total_; i = next_.fetch_add(1)) (*task_)(i, total_);
  }
  void Work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (quit_) return;
      }
      in_parallel_ = true;
      Drain();
      in_parallel_ = false;
      std::lock_guard<std::mutex> lock(mutex_);
      if (--running_ == 0) done_.notify_one();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_, call_mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int, int)> *task_ = nullptr;
  std::atomic<int> next_{0};
  int total_ = 0, running_ = 0;
  uint64_t generation_ = 0;
  bool quit_ = false;
  static thread_local bool in_parallel_;
};
thread_local bool ThreadPool::in_parallel_ = false;

}  // namespace

int KernelThreads() {
  const char *env = std::getenv("SSD_CONV_THREADS");
  const int wanted = env ? std::atoi(env) : 0;
  if (wanted > 0) return wanted;
  const unsigned cores = std::thread::hardware_concurrency();
  return cores ? static_cast<int>(cores) : 1;
}

dnnl::threadpool_interop::threadpool_iface &KernelThreadPool() {
  static ThreadPool pool(KernelThreads());
  return pool;
}

void KernelParallelFor(int n, const std::function<void(int, int)> &fn) {
  KernelThreadPool().parallel_for(n, fn);
}
