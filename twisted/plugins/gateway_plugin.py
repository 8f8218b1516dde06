from twisted.application.service import ServiceMaker

gateway = ServiceMaker("gateway", "gateway.tap", "Instant-messaging federation and compliance gateway", "gateway")
